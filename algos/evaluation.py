"""Held-out evaluation through the group collector: success per task and per init state, with 95% intervals.

Every evaluation in ript (the trainer's start, periodic and end evaluations,
`recipes/eval_libero.py`, the benchmarks) runs `evaluate_contexts`: each (task,
init state) runs its episodes as one group on the same workers and collector as
training, so an episode is judged by the same outcome parser. Repeats of one
init state are not independent draws of the task, so results are kept per state
(`by_init_state`): a rate that rests on few distinct states shows it there.
The interval is Wilson's score interval, which stays inside [0, 1] and is not
degenerate at 0 or 1 successes, unlike the normal approximation.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tensordict import TensorDictBase

from .group_collection import Context, Episode, GroupCollector, finished_episodes
from .policy import evaluating

Z95 = 1.959963984540054  # two-sided 95% normal quantile


@dataclass(frozen=True)
class EpisodeRecord:
    """One evaluation episode: where it started and whether it succeeded."""

    task: int
    init_state: int
    success: bool
    steps: int


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial rate; (0, 1) when there is no episode."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def eval_schedule(tasks: int, init_states: Sequence[int], episodes: int) -> dict[Context, int]:
    """Episodes per (task, init state): `episodes` per task, cycling over the held-out states."""
    counts: dict[Context, int] = defaultdict(int)
    for task in range(tasks):
        for i in range(episodes):
            counts[Context(task, int(init_states[i % len(init_states)]))] += 1
    return dict(counts)


def shard_schedule(schedule: dict[Context, int], rank: int, world_size: int) -> dict[Context, int]:
    """This rank's round-robin share of the episodes (DDP: the ranks' records together are the whole)."""
    flat = [ctx for ctx, n in schedule.items() for _ in range(n)]
    mine: dict[Context, int] = defaultdict(int)
    for ctx in flat[rank::world_size]:
        mine[ctx] += 1
    return dict(mine)


class VideoRecorder:
    """Keeps the camera frames of the first `max_videos` episodes that start in a collection."""

    def __init__(self, max_videos: int) -> None:
        self.max_videos = max_videos
        self.videos: list[tuple[list[torch.Tensor], bool]] = []
        self._open: dict[int, list[list[torch.Tensor]]] = {}  # worker -> frames per step (one list per camera)
        self._started = 0

    def on_batch(self, batch: TensorDictBase) -> None:
        """Append each recorded worker's frames; close its episode at the done step."""
        if self.max_videos <= 0:
            return
        ends = {(ep.worker, ep.end): ep.success for ep in finished_episodes(batch)}
        cams = camera_keys(batch)
        frames = [batch.get(k) for k in cams]
        for t in range(batch.shape[1]):  # time outer: the episodes that start first are the ones kept
            for w in range(batch.shape[0]):
                if w not in self._open:
                    if self._started >= self.max_videos:
                        continue
                    self._open[w], self._started = [], self._started + 1
                self._open[w].append([f[w, t] for f in frames])
                if (w, t) in ends:
                    last = [batch.get(("next", *k))[w, t] for k in cams]
                    self.videos.append((self._open.pop(w) + [last], ends[(w, t)]))


def camera_keys(batch: TensorDictBase) -> list[tuple[str, str]]:
    """The uint8 CHW image entries under "observation" (the cameras a video shows)."""
    obs = batch.get("observation")
    return [("observation", k) for k in sorted(obs.keys()) if isinstance(k, str)
            and obs.get(k).dtype == torch.uint8 and obs.get(k).ndim >= 3 and obs.get(k).shape[-3] == 3]


def evaluate_contexts(
    collector: GroupCollector,
    policy: torch.nn.Module,
    schedule: dict[Context, int],
    *,
    group_id_base: int,
    max_videos: int = 0,
) -> tuple[list[EpisodeRecord], list[tuple[list[Any], bool]]]:
    """Run `schedule` ((task, init state) -> episodes) in eval mode; every episode's record and up to `max_videos` videos."""
    groups = {group_id_base + i: ctx for i, ctx in enumerate(schedule)}
    repeats = {gid: schedule[ctx] for gid, ctx in groups.items()}
    recorder = VideoRecorder(max_videos)
    steps: dict[int, list[int]] = defaultdict(list)

    def note(ep: Episode) -> None:
        steps[ep.group_id].append(ep.steps)

    with evaluating(policy):  # the training flag comes back even if an env worker fails
        outcomes = collector.collect(groups, repeats, on_batch=recorder.on_batch, on_episode=note)
    records = [EpisodeRecord(ctx.task, ctx.init_state, ok, n)
               for gid, ctx in groups.items() for ok, n in zip(outcomes[gid], steps[gid])]
    return records, recorder.videos


def summarise(records: Iterable[EpisodeRecord], task_names: Sequence[str]) -> dict[str, Any]:
    """Success overall and per task, each with its Wilson 95% interval, and successes per init state."""
    records = list(records)
    per_task: dict[str, Any] = {}
    for t, name in enumerate(task_names):
        mine = [r for r in records if r.task == t]
        wins = sum(r.success for r in mine)
        by_state: dict[int, list[int]] = {}
        for r in sorted(mine, key=lambda r: r.init_state):
            s = by_state.setdefault(r.init_state, [0, 0])
            s[0] += int(r.success)
            s[1] += 1
        per_task[name] = {"success_rate": wins / len(mine) if mine else float("nan"), "episodes": len(mine),
                          "ci95": list(wilson_interval(wins, len(mine))), "by_init_state": by_state}
    wins = sum(r.success for r in records)
    return {"success_rate": wins / len(records) if records else float("nan"), "episodes": len(records),
            "ci95": list(wilson_interval(wins, len(records))), "tasks": per_task}
