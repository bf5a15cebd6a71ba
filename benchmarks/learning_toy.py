"""Toy learning check through the trainer: RIPT-CFG alone raises a weak policy's held-out success.

Each run is `python recipes/ript_cfg.py --config-name toy_learning algo.mode=M train.seed=S`
(in-process): a flow-matching MLP behaviour-cloned on noisy oracle chunks, then RIPT-CFG on
its own rollouts of torchrl's ToyVLAEnv. Start and end are the trainer's held-out
evaluations (256 episodes). A run passes when end >= 2 x start and end >= start + 0.30.

    python benchmarks/learning_toy.py save_results=true                # 3 seeds x 2 modes
    python benchmarks/learning_toy.py seeds=[0] modes=[cfg] recipe=[optim.lr=3e-4]
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ript.recipes.training.cli import run_cli
from ript.recipes.training.config import load_config
from ript.recipes.ript_cfg import train

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class ToyCheck:
    """Which runs of configs/toy_learning.yaml to make, and where their outputs go."""

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    modes: list[str] = field(default_factory=lambda: ["weighted", "cfg"])
    recipe: list[str] = field(default_factory=list)  # extra recipe overrides for every run, e.g. [optim.lr=3e-4]
    out: str = "runs/learning_toy"  # one run directory per (mode, seed) below it, learning_toy.json and a plot
    save_results: bool = False  # copy the json and the plot into benchmarks/results/


def run(mode: str, seed: int, out: Path, recipe: list[str]) -> dict[str, Any]:
    """One trainer run; its held-out start and end, curve of rollout success, wall and CPU seconds."""
    cfg = load_config("toy_learning", [f"algo.mode={mode}", f"train.seed={seed}", f"logging.output_dir={out / f'{mode}_seed{seed}'}", *recipe])
    t0, c0 = time.perf_counter(), time.process_time()
    summary = train(cfg)
    evals = summary["evaluation_history"]
    with open(summary["metrics_csv"]) as f:
        curve = [float(row["train/success_rate"]) for row in csv.DictReader(f) if row["train/success_rate"]]
    return {"mode": mode, "seed": seed, "start_eval": evals[0]["success_rate"], "end_eval": evals[-1]["success_rate"],
            "curve": curve, "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}


def passes(result: dict[str, Any]) -> bool:
    """The acceptance rule: end >= 2 x start and end >= start + 0.30 (held-out evaluation)."""
    s, e = result["start_eval"], result["end_eval"]
    return e >= 2 * s and e >= s + 0.30


def main(check: ToyCheck) -> list[dict[str, Any]]:
    """Every (mode, seed) run, a table, learning_toy.json and a plot of the rollout success curves."""
    out = Path(check.out)
    results = [run(mode, seed, out, list(check.recipe)) for mode in check.modes for seed in check.seeds]
    print("\nmode      seed  start  end    cpu_s  wall_s  pass")
    for r in results:
        print(f"{r['mode']:9s} {r['seed']:4d}  {r['start_eval']:.3f}  {r['end_eval']:.3f}  {r['cpu_s']:5.0f}  {r['wall_s']:6.0f}  {passes(r)}")
    print(f"all pass: {all(passes(r) for r in results)}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "learning_toy.json").write_text(json.dumps({"check": asdict(check), "results": results}, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(check.modes), figsize=(5 * len(check.modes), 3.5), squeeze=False)
    for ax, mode in zip(axes[0], check.modes):
        for r in (r for r in results if r["mode"] == mode):
            ax.plot(range(1, len(r["curve"]) + 1), r["curve"], marker="o", label=f"seed {r['seed']} (eval {r['start_eval']:.2f}->{r['end_eval']:.2f})")
        ax.set(title=f"RIPT-CFG {mode} on ToyVLAEnv", xlabel="iteration", ylabel="rollout success", ylim=(0, 1))
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "learning_toy.png", dpi=100)
    print(f"results: {out / 'learning_toy.json'}, plot: {out / 'learning_toy.png'}")
    for name in ("learning_toy.json", "learning_toy.png") if check.save_results else ():
        shutil.copy2(out / name, RESULTS / name)
    return results


def check_recipe(check: ToyCheck) -> None:
    """The recipe overrides must make a valid toy_learning config (ConfigError otherwise), checked by --dry-run too."""
    load_config("toy_learning", list(check.recipe))


if __name__ == "__main__":
    run_cli(ToyCheck, main, validate=check_recipe)
