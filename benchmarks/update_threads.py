"""Torch threads for the update: the trainer's update step at each thread count, alternated in one process.

    python benchmarks/update_threads.py [threads=[1,2]] [repeats=3] [overrides=[...]] [--dry-run]

One trainer of configs/benchmark.yaml (the main job's settings) collects once until it keeps
a group; then `Trainer.update` (epochs x minibatches of the loss, the optimizer steps) runs on
that buffer `repeats` times at each count of `threads`, alternating. The env workers wait while
the update runs, so their cores are free. Printed: the median seconds per count and each one's
ratio to the first; the last line is `update threads <best count>`, the value to set as
`train.update_threads`.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ript.recipes.training.cli import run_cli
from ript.recipes.training.config import ConfigError, load_config
from ript.recipes.training.distributed import distributed_session
from ript.recipes.training.factories import torch_threads
from ript.recipes.training.trainer import Trainer, seed_iteration

CONFIG_NAME = "benchmark"


@dataclass
class UpdateThreadsCheck:
    """Thread counts to compare, alternations, and trainer overrides of configs/benchmark.yaml."""

    threads: list[int] = field(default_factory=lambda: [1, 2])
    repeats: int = 3
    overrides: list[str] = field(default_factory=list)  # e.g. [env.kind=toy,policy.kind=mlp]


def filled_trainer(trainer: Trainer, max_tries: int = 5) -> None:
    """Collect until an iteration keeps a group, and put its steps in the trainer's buffer."""
    for it in range(max_tries):
        collected = trainer.collect(it)
        if collected.data is not None:
            trainer.prepare(collected, it, seed_iteration(trainer.seed, it))
            return
    raise RuntimeError(f"no informative group in {max_tries} collections: raise algo.max_context_draws")


def main(check: UpdateThreadsCheck) -> dict[str, Any]:
    """Time `Trainer.update` at each thread count; print medians and ratios; the last line names the fastest."""
    cfg = load_config(CONFIG_NAME, ["logging.progress=false", *check.overrides])
    seconds: dict[int, list[float]] = {n: [] for n in check.threads}
    with tempfile.TemporaryDirectory() as out, distributed_session(cfg.train.device, None, cfg.distributed.timeout_s) as dist:
        trainer = Trainer(cfg, Path(out) / "run", dist)
        try:
            filled_trainer(trainer)
            for r in range(check.repeats + 1):  # the first round warms up and is not counted
                for n in check.threads:
                    with torch_threads(n):
                        start = time.perf_counter()
                        trainer.update(seed_iteration(trainer.seed, 100 + r))
                        if r:
                            seconds[n].append(time.perf_counter() - start)
        finally:
            trainer.close()
    median = {n: statistics.median(s) for n, s in seconds.items()}
    base = median[check.threads[0]]
    print(f"\n{CONFIG_NAME}: Trainer.update on {len(trainer.buffer)} stored steps, minibatch {cfg.optim.minibatch_size}, {cfg.optim.epochs} epoch(s)")
    for n in check.threads:
        print(f"  {n} thread(s): {median[n]:7.3f} s  ratio to {check.threads[0]}: {median[n] / base:.3f}")
    best = min(median, key=median.get)
    print(f"update threads {best}")
    return {"seconds": seconds, "median": median, "best": best}


def validate(check: UpdateThreadsCheck) -> None:
    """Counts are positive and distinct, repeats >= 1, and the overrides make a valid config."""
    if not check.threads or min(check.threads) < 1 or len(set(check.threads)) != len(check.threads) or check.repeats < 1:
        raise ConfigError(f"threads must be distinct counts >= 1 and repeats >= 1, got {check.threads} and {check.repeats}")
    load_config(CONFIG_NAME, check.overrides)


if __name__ == "__main__":
    run_cli(UpdateThreadsCheck, main, validate=validate)
