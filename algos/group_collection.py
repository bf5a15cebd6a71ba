"""Groups of episodes from chosen contexts, through a persistent torchrl Collector.

RIPT compares K rollouts that start from the same context (task, init state): a
group. Training groups and held-out evaluation episodes are both "run these
contexts this many times", so both go through `GroupCollector.collect`: it queues
the contexts on the env's workers (the env contract: `push_contexts(queue,
worker=w)` and `clear_contexts()`, kept by LiberoEnv and the toy context env),
drives the collector until every group is complete, and reads each finished
episode's outcome in one place (`finished_episodes`).

A context's task is an index into the run's task list. `worker_options[task]`
names the workers that may run it (the ones built for that task, or any worker
of the same suite, which switches task on reset), and `env_task_ids[task]` is
the task id the env itself knows.

Env-agnostic: nothing here imports LIBERO.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import torch
from tensordict import TensorDictBase

DONE, SUCCESS, STEP_COUNT = ("next", "done"), ("next", "success"), ("next", "step_count")
GROUP_ID, TASK_ID, INIT_STATE_ID = "group_id", "task_id", "init_state_id"


class Context(NamedTuple):
    """Where an episode starts: a task (index into the run's task list) and one of its init states."""

    task: int
    init_state: int


@dataclass(frozen=True)
class Episode:
    """The outcome of one finished episode, as read from a collector batch."""

    group_id: int
    success: bool
    steps: int  # decision steps (0 when the env has no step counter)
    worker: int
    end: int  # index of its last step in the batch's time dimension


def finished_episodes(batch: TensorDictBase) -> list[Episode]:
    """Every episode that ends in `batch` ([workers, time] or [time]): the one outcome parser.

    An episode succeeds if its done step reports success (the env's success is
    sticky over an action chunk and ends the episode).
    """
    shape = batch.shape if batch.ndim == 2 else torch.Size([1, *batch.shape])
    done = batch.get(DONE).reshape(*shape, -1).any(-1)
    if not done.any():
        return []
    success = batch.get(SUCCESS).reshape(*shape, -1).any(-1)
    gids = batch.get(GROUP_ID).reshape(*shape)
    steps = batch.get(STEP_COUNT).reshape(*shape) if STEP_COUNT in batch.keys(True) else torch.zeros(shape, dtype=torch.long)
    return [
        Episode(int(gids[w, t]), bool(success[w, t]), int(steps[w, t]), int(w), int(t))
        for w, t in done.nonzero().tolist()
    ]


def assign_workers(tasks: Sequence[int], worker_options: Sequence[Sequence[int]], n_workers: int) -> list[int]:
    """A worker for each episode (in order): the least loaded among those that may run its task."""
    load = [0] * n_workers
    out = []
    for task in tasks:
        options = worker_options[task]
        if not options:
            raise ValueError(f"no env worker can run task index {task}: build a worker for it (env.num_envs)")
        w = min(options, key=lambda i: (load[i], i))
        load[w] += 1
        out.append(w)
    return out


class EpisodeSource(Protocol):
    """What the collector drives: a batched env with the context contract and a persistent Collector.

    `recipes/training/faults.EnvSupervisor` is one (it rebuilds both after a worker fault).
    """

    env: Any
    collector: Any
    batches: Iterator[TensorDictBase]


class GroupCollector:
    """Runs `repeats` episodes of each context and returns each group's outcomes, feeding every batch onwards."""

    def __init__(self, source: EpisodeSource, *, worker_options: Sequence[Sequence[int]], env_task_ids: Sequence[int],
                 batches_per_episode: int = 1) -> None:
        self.source = source
        self.worker_options = [list(o) for o in worker_options]
        self.env_task_ids = [int(t) for t in env_task_ids]
        self.batches_per_episode = int(batches_per_episode)  # collector batches a longest episode spans (bounds the loop)

    @property
    def n_workers(self) -> int:
        """Env workers (the batch's first dimension)."""
        return self.source.env.batch_size.numel()

    def queue(self, groups: Mapping[int, Context], repeats: Mapping[int, int]) -> list[int]:
        """Put every episode of `groups` on a worker's queue; returns the queue lengths."""
        env, n = self.source.env, self.n_workers
        episodes = [(gid, ctx) for gid, ctx in groups.items() for _ in range(repeats[gid])]
        workers = assign_workers([ctx.task for _, ctx in episodes], self.worker_options, n)
        queues: list[list[dict[str, int]]] = [[] for _ in range(n)]
        for w, (gid, ctx) in zip(workers, episodes):
            queues[w].append({INIT_STATE_ID: ctx.init_state, GROUP_ID: gid, TASK_ID: self.env_task_ids[ctx.task]})
        env.clear_contexts()
        for w, q in enumerate(queues):
            if q:
                env.push_contexts(q, worker=w)
        return [len(q) for q in queues]

    def collect(
        self,
        groups: Mapping[int, Context],
        repeats: int | Mapping[int, int],
        *,
        on_batch: Callable[[TensorDictBase], None] | None = None,
        on_episode: Callable[[Episode], None] | None = None,
    ) -> dict[int, list[bool]]:
        """Roll out every group to completion; {group id: successes} (a group cut short by the batch cap is incomplete).

        `on_batch` sees every collector batch (e.g. a GroupLOOAdvantage); `on_episode`
        every counted episode. Episodes that are not ours (idle workers) are ignored.
        """
        wanted = {g: repeats for g in groups} if isinstance(repeats, int) else {g: int(repeats[g]) for g in groups}
        lengths = self.queue(groups, wanted)
        self.source.collector.reset()  # every worker starts its first queued episode now
        results: dict[int, list[bool]] = defaultdict(list)
        open_groups = {g for g in groups if wanted[g] > 0}
        for _ in range((max(lengths) + 2) * self.batches_per_episode):  # queued episodes, and two more, of the longest kind
            if not open_groups:
                break
            batch = next(self.source.batches)
            for ep in finished_episodes(batch):
                if ep.group_id in open_groups:
                    results[ep.group_id].append(ep.success)
                    if on_episode is not None:
                        on_episode(ep)
                    if len(results[ep.group_id]) >= wanted[ep.group_id]:
                        open_groups.discard(ep.group_id)
            if on_batch is not None:
                on_batch(batch)
        self.source.env.clear_contexts()
        return {g: results.get(g, []) for g in groups}
