"""One LIBERO worker per task (tasks may come from different suites), driven by a torchrl Collector.

Shared by `recipes/bc_pretrain.py` (held-out evaluation of every task in parallel) and
`benchmarks/learning_libero.py` (RIPT-CFG groups and evaluation across tasks). Each
worker runs only its own task, so a task never waits for a simulator rebuild; episodes
are queued per worker as (init state, group id) contexts and counted by group id.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDictBase
from torchrl.collectors import Collector

from ript.algos.policy import evaluating
from ript.envs import NormStats, make_libero_env, make_pi0_transforms, push_contexts
from ript.envs import keys as K

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


def draw_group_starts(init_states: Sequence[int], groups_per_task: int, n_tasks: int, generator: torch.Generator) -> list[list[int]]:
    """Each task's init states for one iteration's groups, drawn with replacement from `init_states`.

    One function, so that an offline study (benchmarks/update_drift.py) draws the same states
    as learning_libero's iteration for the same seed.
    """
    return [[int(init_states[int(i)]) for i in torch.randint(len(init_states), (groups_per_task,), generator=generator)]
            for _ in range(n_tasks)]


def parse_task(spec: str) -> tuple[str, int]:
    """"libero_object:1" -> ("libero_object", 1), with a one-line error naming the format."""
    suite, sep, task = spec.partition(":")
    if not suite or not sep or not task.isdigit():
        raise ValueError(f"task {spec!r} is not 'suite:task_id' (e.g. libero_object:1)")
    return suite, int(task)


class TaskWorkers:
    """A ParallelEnv with one LiberoEnv + PI0 transforms per task, and its Collector."""

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
        self.next_group = 1

    def run(self, init_states_per_task: Sequence[Sequence[int]], repeats: int,
            on_batch: Callable[[TensorDictBase], None] | None = None) -> Results:
        """`repeats` episodes (one group) from each listed init state on each task's worker.

        `on_batch(batch)` sees every collector batch (e.g. a GroupLOOAdvantage).
        """
        groups: dict[int, tuple[int, int]] = {}
        self.env.clear_contexts()
        for w, inits in enumerate(init_states_per_task):
            queue = []
            for init in inits:
                gid, self.next_group = self.next_group, self.next_group + 1
                groups[gid] = (w, int(init))
                queue += [{K.INIT_STATE_ID: int(init), K.GROUP_ID: gid}] * repeats
            if queue:
                push_contexts(self.env, queue, worker=w)
        results: dict[int, list[bool]] = defaultdict(list)
        self.collector.reset()  # every worker starts its first queued episode now
        while any(len(results[g]) < repeats for g in groups):
            batch = next(self.batches)
            done = batch.get(("next", "done")).reshape(*batch.shape, -1).any(-1)
            gids = batch.get(K.GROUP_ID).reshape(*batch.shape)[done].tolist()
            succ = batch.get(("next", K.SUCCESS)).reshape(*batch.shape, -1).any(-1)[done].tolist()
            for gid, ok in zip(gids, succ):
                if gid in groups and len(results[gid]) < repeats:
                    results[gid].append(bool(ok))
            if on_batch is not None:
                on_batch(batch)
        return {g: (*groups[g], results[g]) for g in groups}

    def success_by_task(self, results: Results) -> dict[str, float]:
        per: dict[str, list[bool]] = defaultdict(list)
        for w, _, oks in results.values():
            per[self.tasks[w]] += oks
        return {t: sum(per[t]) / max(len(per[t]), 1) for t in self.tasks}

    def successes_by_state(self, results: Results) -> dict[str, dict[int, int]]:
        """Successes per task and init state. Why: repeats of one init state are not independent episodes,
        so how a rate splits over the states says how many distinct outcomes it rests on."""
        per: dict[str, dict[int, int]] = {t: defaultdict(int) for t in self.tasks}
        for w, init, oks in results.values():
            per[self.tasks[w]][init] += sum(oks)
        return {t: dict(sorted(v.items())) for t, v in per.items()}

    def evaluate(self, init_states: Sequence[int], repeats: int = 1) -> dict[str, float]:
        """Success rate per task of the policy the workers were built with, over init_states x repeats episodes (eval mode)."""
        return self.success_by_task(self.evaluate_episodes(init_states, repeats))

    def evaluate_episodes(self, init_states: Sequence[int], repeats: int = 1) -> Results:
        """Every evaluation episode's outcome, by task and init state (eval mode)."""
        with evaluating(self.actor):
            return self.run([list(init_states)] * len(self.tasks), repeats)

    def close(self) -> None:
        self.collector.shutdown()
        if not self.env.is_closed:
            self.env.close()
