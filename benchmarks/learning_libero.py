"""LIBERO learning check: `recipes/ript_cfg.py --config-name libero_learning train.seed=S` per seed, in-process.

A stopped seed resumes from its own checkpoints. The trainer's start and end evaluations (50
held-out episodes per task) are compared: target a mean gain over seeds >= +0.20, no task lower on
average. Writes <out>/learning_libero.json and .png (and to benchmarks/results/ with save_results=true).

    python benchmarks/learning_libero.py seeds=[0,1] save_results=true
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ript.recipes.training.cli import run_cli
from ript.recipes.training.config import load_config
from ript.recipes.ript_cfg import train

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class LiberoCheck:
    """Which seeds of configs/libero_learning.yaml to run, and where."""

    seeds: list[int] = field(default_factory=lambda: [0, 1])
    recipe: list[str] = field(default_factory=list)  # extra recipe overrides for every seed, e.g. [train.max_minutes=30]
    out: str = "runs/learning_libero"  # seed S runs in <out>/seed<S>
    save_results: bool = False  # copy the json and the plot into benchmarks/results/


def run_seed(seed: int, out: Path, recipe: list[str]) -> dict[str, Any]:
    """One seed through the recipe (resumed if its directory holds checkpoints); start and end per task."""
    run_dir = out / f"seed{seed}"
    overrides = [f"train.seed={seed}", f"logging.output_dir={run_dir}", *recipe]
    resume = ["checkpoint.resume=auto"] if (run_dir / "checkpoints").is_dir() else []
    cfg = load_config("libero_learning", overrides + resume)
    summary = train(cfg)
    start, end = summary["evaluation_history"][0], summary["evaluation_history"][-1]
    per_task = lambda ev, key: {t: v[key] for t, v in ev["tasks"].items()}  # noqa: E731
    return {"seed": seed, "command": "python recipes/ript_cfg.py --config-name libero_learning " + " ".join(overrides),
            "fixture_placement": {"train": cfg.env.fixture_placement, "eval": cfg.eval.fixture_placement},
            "iterations": summary["iterations"], "ript_minutes": round(summary["ript_minutes"], 1),
            "start": per_task(start, "success_rate"), "end": per_task(end, "success_rate"), "start_iteration": start["iteration"],
            "end_iteration": end["iteration"], "start_by_state": per_task(start, "by_init_state"), "end_by_state": per_task(end, "by_init_state")}


def verdict(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-task gain averaged over seeds, its mean, and whether it meets the target."""
    gain = {t: sum(r["end"][t] - r["start"][t] for r in runs) / len(runs) for t in runs[0]["start"]}
    mean = sum(gain.values()) / len(gain)  # rates are multiples of 1/50: compare exactly, not through float rounding
    return {"gain_by_task": gain, "mean_gain": mean, "passes": round(mean, 9) >= 0.20 and all(round(g, 9) >= 0 for g in gain.values())}


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    """Start (pale) and end held-out success per task, one pair of bars per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks, width = list(runs[0]["start"]), 0.8 / (2 * len(runs))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for i, r in enumerate(runs):
        for j, (when, alpha) in enumerate((("start", 0.4), ("end", 1.0))):
            ax.bar([k + (2 * i + j) * width for k in range(len(tasks))], [r[when][t] for t in tasks], width, color=f"C{i}",
                   alpha=alpha, label=f"seed {r['seed']} {when}")
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(tasks))], tasks)
    ax.set(ylabel="held-out success (50 episodes)", ylim=(0, 1), title="RIPT-CFG from the shipped tiny PI0 (CPU)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(check: LiberoCheck) -> dict[str, Any]:
    """Run (or resume) every seed, then compare and write the results."""
    out = Path(check.out)
    runs = [run_seed(seed, out, list(check.recipe)) for seed in check.seeds]
    result = {"runs": runs, **verdict(runs)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "learning_libero.json").write_text(json.dumps(result, indent=1))
    plot(runs, out / "learning_libero.png")
    for r in runs:
        print(f"seed {r['seed']} ({r['iterations']} it, {r['ript_minutes']} min): {r['start']} -> {r['end']}")
    print(f"mean gain {result['mean_gain']:+.3f}: {'PASS' if result['passes'] else 'FAIL'} (target +0.20, no task lower on average)")
    for name in ("learning_libero.json", "learning_libero.png") if check.save_results else ():
        shutil.copy2(out / name, RESULTS / name)
    return result


def check_recipe(check: LiberoCheck) -> None:
    """The recipe overrides must make a valid libero_learning config (--dry-run checks it too)."""
    load_config("libero_learning", list(check.recipe))


if __name__ == "__main__":
    run_cli(LiberoCheck, main, validate=check_recipe)
