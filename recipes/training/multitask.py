"""One LIBERO worker per task of a cloned checkpoint (tasks may come from different suites), for evaluation.

`recipes/bc_pretrain.py` evaluates every task in parallel with it, and the benchmarks that
measure a checkpoint outside training use it. Each worker runs only its own task, so a task
never waits for a simulator rebuild. Episodes run through the same group collector and
evaluator as the trainer's (`ript.algos.group_collection`, `ript.algos.evaluation`).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torchrl.collectors import Collector

from ript.algos.evaluation import EpisodeRecord, evaluate_contexts, summarise
from ript.algos.group_collection import Context, GroupCollector
from ript.envs import NormStats, make_libero_env, make_pi0_transforms

from .config import resolve_repo_path
from .factories import SUITE_MAX_STEPS

Results = dict[int, tuple[int, int, list[bool]]]  # group id -> (task index, init state, successes)


def read_bc_config(checkpoint: Path) -> dict[str, Any]:
    """What bc_pretrain saved beside a checkpoint: the tasks it was cloned on and the render size it saw."""
    info = Path(checkpoint) / "bc_config.json"
    if not info.is_file():
        raise FileNotFoundError(f"{checkpoint} has no bc_config.json: pass a checkpoint written by recipes/bc_pretrain.py")
    return json.loads(info.read_text())


def open_bc_checkpoint(parser: argparse.ArgumentParser, checkpoint: str) -> tuple[Path, dict[str, Any]]:
    """A benchmark's --checkpoint resolved from the repo root, with its bc_config.json; else the parser's one-line error."""
    path = Path(resolve_repo_path(checkpoint))
    try:
        return path, read_bc_config(path)
    except FileNotFoundError as err:
        parser.error(str(err))  # NoReturn: exits with the one-line message


def parse_task(spec: str) -> tuple[str, int]:
    """"libero_object:1" -> ("libero_object", 1), with a one-line error naming the format."""
    suite, sep, task = spec.partition(":")
    if not suite or not sep or not task.isdigit():
        raise ValueError(f"task {spec!r} is not 'suite:task_id' (e.g. libero_object:1)")
    return suite, int(task)


class TaskWorkers:
    """A ParallelEnv with one LiberoEnv + PI0 transforms per task, its Collector, and the group collector over them."""

    def __init__(self, actor: Any, norm: NormStats, tasks: Sequence[str], camera_size: int, seed: int = 0,
                 fixture_placement: str = "pinned") -> None:
        self.tasks = list(tasks)
        self.actor = actor  # the collector acts with this one
        specs = [parse_task(t) for t in self.tasks]
        config = actor.policy.config
        transforms = make_pi0_transforms(norm, image_size=config.image_resolution[0], tokenizer=actor.tokenizer,
                                         tokenizer_max_length=config.tokenizer_max_length)
        self.env = make_libero_env(specs[0][0], [t for _, t in specs], suites=[s for s, _ in specs], num_envs=len(specs),
                                   parallel=len(specs) > 1, transforms=transforms, seed=seed,
                                   action_chunk=config.n_action_steps, camera_size=camera_size, init_state_mode="fixed",
                                   fixture_placement=fixture_placement)
        decisions = max(-(-SUITE_MAX_STEPS[s] // config.n_action_steps) for s, _ in specs)
        self.collector = Collector(self.env, actor, frames_per_batch=len(specs) * decisions, total_frames=-1,
                                   auto_register_policy_transforms=False)
        self.batches = iter(self.collector)
        self.groups = GroupCollector(self, worker_options=[[w] for w in range(len(specs))], env_task_ids=[t for _, t in specs])
        self.evaluations = 0

    def evaluate_episodes(self, init_states: Sequence[int], repeats: int = 1) -> list[EpisodeRecord]:
        """Every episode of `repeats` runs from each init state on each task (eval mode)."""
        schedule = {Context(t, int(s)): repeats for t in range(len(self.tasks)) for s in init_states}
        self.evaluations += 1
        records, _ = evaluate_contexts(self.groups, self.actor, schedule, group_id_base=10**12 + self.evaluations * 10**5)
        return records

    def evaluate(self, init_states: Sequence[int], repeats: int = 1) -> dict[str, float]:
        """Success rate per task over init_states x repeats episodes."""
        summary = summarise(self.evaluate_episodes(init_states, repeats), self.tasks)
        return {t: v["success_rate"] for t, v in summary["tasks"].items()}

    def close(self) -> None:
        """Stop the collector and the env workers."""
        self.collector.shutdown()
        if not self.env.is_closed:
            self.env.close()
