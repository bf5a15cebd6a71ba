"""Collection at the speed of the env: the trainer's rollouts against the env alone, and where their time goes.

    python benchmarks/collection_throughput.py [workers=[1,2]] [repeats=2] [overrides=[...]] [save_results=true] [--dry-run]

For each worker count, one trainer of configs/quick_test.yaml (the main job: 128 px cameras, chunks of 5,
the shipped tiny PI0) is built and, alternating `repeats` times:
  (a) the env alone: the trainer's env workers, transforms and group collector roll out its contexts
      (algo.contexts_per_iteration x algo.group_size episodes) under a constant policy;
  (b) the trainer's own collection (`Trainer.collect`: dynamic sampling, the PI0 policy, advantages).
Both count simulator steps with the workers' own clocks (settle steps included). Printed: steps/s of each,
their ratio, and (c) the time of (b) split into physics, rendering, the rest of the workers' steps,
inter-process transfer and waiting, transforms, policy input preparation, denoising, and the collector.
The last line is `collection/env R`, R = b/a (the lowest over the worker counts).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase

from ript.algos.collection_profile import PARTS, CollectionProfile
from ript.algos.group_collection import Context
from ript.recipes.training.cli import run_cli
from ript.recipes.training.config import ConfigError, load_config
from ript.recipes.training.distributed import distributed_session
from ript.recipes.training.factories import make_collector, make_group_collector
from ript.recipes.training.trainer import Trainer

CONFIG_NAME = "quick_test"
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class ThroughputCheck:
    """Worker counts to measure, alternations per count, and trainer overrides of configs/quick_test.yaml."""

    workers: list[int] = field(default_factory=lambda: [1, 2])
    repeats: int = 2
    overrides: list[str] = field(default_factory=list)  # e.g. [env.camera_size=256]
    save_results: bool = False  # write benchmarks/results/collection_throughput.json


class ConstantPolicy(TensorDictModuleBase):
    """Acts the normalised zero chunk (the dataset's mean action): the env's cost with no policy compute."""

    in_keys: list[str] = []
    out_keys = ["action"]

    def __init__(self, n_action_steps: int, action_dim: int) -> None:
        super().__init__()
        self.shape = (n_action_steps, action_dim)

    def forward(self, td: TensorDictBase) -> TensorDictBase:
        """Write the same action for every worker."""
        return td.set("action", torch.zeros(*td.batch_size, *self.shape))


def env_alone(trainer: Trainer, contexts: list[tuple[int, int]], group_size: int) -> dict[str, float]:
    """Roll the contexts out with the constant policy in the trainer's env; wall seconds, sim steps, breakdown."""
    env, policy = trainer.envs.env, trainer.policy
    constant = ConstantPolicy(policy.n_action_steps, policy.action_dim)
    collector = make_collector(env, constant, trainer.cfg)
    groups = make_group_collector(SimpleNamespace(env=env, collector=collector, batches=iter(collector)), trainer.cfg)
    with CollectionProfile(env, constant, worker_clocks=True) as profile:
        start = time.perf_counter()
        groups.collect({10**8 + i: Context(*c) for i, c in enumerate(contexts)}, group_size)
        wall = time.perf_counter() - start
    collector.shutdown(close_env=False)
    parts = profile.breakdown(wall)
    return {"wall_s": wall, **parts}


def trainer_collection(trainer: Trainer, it: int) -> dict[str, float]:
    """One `Trainer.collect`: its wall seconds (the sum of its parts), sim steps and breakdown."""
    metrics = trainer.collect(it).metrics
    parts = {part: metrics[f"time/collect_{part}_s"] for part in PARTS}
    return {"wall_s": sum(parts.values()), "sim_steps": metrics["data/sim_steps"], **parts}


def measure(workers: int, check: ThroughputCheck) -> dict[str, Any]:
    """Alternate (a) and (b) `repeats` times on one trainer with `workers` env workers; medians."""
    cfg = load_config(CONFIG_NAME, [f"env.num_envs={workers}", "logging.progress=false", *check.overrides])
    with tempfile.TemporaryDirectory() as out, distributed_session(cfg.train.device, None, cfg.distributed.timeout_s) as dist:
        trainer = Trainer(cfg, Path(out) / "run", dist)
        try:
            contexts = trainer.sampler.contexts[: cfg.algo.contexts_per_iteration]
            env_alone(trainer, contexts[:1], 1)  # warm-up: first renders, first policy call
            runs: dict[str, list[dict[str, float]]] = {"a": [], "b": []}
            for it in range(check.repeats):
                runs["a"].append(env_alone(trainer, contexts, cfg.algo.group_size))
                runs["b"].append(trainer_collection(trainer, it))
        finally:
            trainer.close()
    rate = {k: statistics.median(r["sim_steps"] / r["wall_s"] for r in v) for k, v in runs.items()}
    share = {part: statistics.median(r[part] / r["wall_s"] for r in runs["b"]) for part in PARTS}
    # one worker's own cost of a simulator step (its clocks; worker parts are means over workers)
    worker_ms = {k: {part: statistics.median(1000 * r[part] * workers / r["sim_steps"] for r in v) for part in ("physics", "render")}
                 for k, v in runs.items()}
    return {"workers": workers, "env_alone_sim_steps_per_s": rate["a"], "collection_sim_steps_per_s": rate["b"],
            "ratio": rate["b"] / rate["a"], "collection_share": share, "worker_ms_per_sim_step": worker_ms, "runs": runs}


def main(check: ThroughputCheck) -> dict[str, Any]:
    """Measure every worker count; print the rates, the ratio and the breakdown; the last line is R."""
    results = [measure(n, check) for n in check.workers]
    cfg = load_config(CONFIG_NAME, check.overrides)
    print(f"\n{CONFIG_NAME}: cameras {cfg.env.camera_size} px, chunks of {cfg.policy.n_action_steps}, torch threads {torch.get_num_threads()}")
    print("workers  env alone (a)  collection (b)  b/a    " + "  ".join(f"{p[:10]:>10s}" for p in PARTS))
    for r in results:
        shares = "  ".join(f"{100 * r['collection_share'][p]:9.1f}%" for p in PARTS)
        print(f"{r['workers']:7d}  {r['env_alone_sim_steps_per_s']:9.1f}/s    {r['collection_sim_steps_per_s']:9.1f}/s    "
              f"{r['ratio']:.2f}   {shares}")
    print("one worker's ms per simulator step (its own clocks): physics, rendering; env alone | collection")
    for r in results:
        a, b = r["worker_ms_per_sim_step"]["a"], r["worker_ms_per_sim_step"]["b"]
        print(f"{r['workers']:7d}  {a['physics']:6.1f}  {a['render']:6.1f}  |  {b['physics']:6.1f}  {b['render']:6.1f}")
    worst = min(r["ratio"] for r in results)
    if check.save_results:
        (RESULTS / "collection_throughput.json").write_text(json.dumps({"check": vars(check), "results": results}, indent=1))
    print(f"collection/env {worst:.2f}")
    return {"results": results, "ratio": worst}


def validate(check: ThroughputCheck) -> None:
    """Worker counts and repeats are positive, and the overrides make a valid LIBERO config."""
    if not check.workers or min(check.workers) < 1 or check.repeats < 1:
        raise ConfigError(f"workers must be a non-empty list of counts >= 1 and repeats >= 1, got {check.workers} and {check.repeats}")
    if load_config(CONFIG_NAME, check.overrides).env.kind != "libero":
        raise ConfigError("collection_throughput measures LIBERO workers: leave env.kind=libero")


if __name__ == "__main__":
    run_cli(ThroughputCheck, main, validate=validate)
