"""Evaluation summaries: Wilson intervals, the episode schedule, sharding over ranks, per-state counts."""

from __future__ import annotations

import math

import pytest

from ript.algos.evaluation import EpisodeRecord, eval_schedule, shard_schedule, summarise, wilson_interval
from ript.algos.group_collection import Context


@pytest.mark.parametrize("k, n, lo, hi", [(0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0), (22, 50, 0.3116, 0.5769)])
def test_wilson_interval_matches_reference_values(k: int, n: int, lo: float, hi: float) -> None:
    got = wilson_interval(k, n)
    assert got[0] == pytest.approx(lo, abs=1e-4) and got[1] == pytest.approx(hi, abs=1e-4)


def test_wilson_interval_contains_the_rate_and_shrinks_with_episodes() -> None:
    for n in (4, 16, 64):
        lo, hi = wilson_interval(n // 4, n)
        assert lo < 0.25 < hi
    assert (wilson_interval(25, 100)[1] - wilson_interval(25, 100)[0]) < (wilson_interval(5, 20)[1] - wilson_interval(5, 20)[0])
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_schedule_cycles_held_out_states_and_shards_without_loss() -> None:
    schedule = eval_schedule(2, [40, 41, 42], 7)
    assert schedule[Context(0, 40)] == 3 and schedule[Context(0, 41)] == 2 and schedule[Context(1, 42)] == 2
    assert sum(schedule.values()) == 14
    parts = [shard_schedule(schedule, r, 3) for r in range(3)]
    merged: dict[Context, int] = {}
    for part in parts:
        for ctx, n in part.items():
            merged[ctx] = merged.get(ctx, 0) + n
    assert merged == schedule and max(sum(p.values()) for p in parts) - min(sum(p.values()) for p in parts) <= 1


def test_summary_per_task_and_per_init_state() -> None:
    records = [EpisodeRecord(0, 40, True, 10), EpisodeRecord(0, 40, False, 20), EpisodeRecord(0, 41, True, 5), EpisodeRecord(1, 40, False, 30)]
    s = summarise(records, ["a", "b"])
    assert s["success_rate"] == 0.5 and s["episodes"] == 4
    assert s["tasks"]["a"]["success_rate"] == pytest.approx(2 / 3) and s["tasks"]["a"]["by_init_state"] == {40: [1, 2], 41: [1, 1]}
    assert s["tasks"]["b"]["ci95"] == list(wilson_interval(0, 1))
    assert math.isnan(summarise([], ["a"])["tasks"]["a"]["success_rate"])


def test_video_recorder_keeps_whole_episodes_across_batches() -> None:
    """Frames of the first episodes that start, each closed at its own done step, carried across batches."""
    import torch
    from tensordict import TensorDict

    from ript.algos.evaluation import VideoRecorder

    def batch(done: list[list[bool]], offset: int) -> TensorDict:
        img = (torch.arange(8).reshape(2, 4) + offset)[..., None, None, None].expand(2, 4, 3, 2, 2).to(torch.uint8)
        return TensorDict({"group_id": torch.zeros(2, 4, dtype=torch.long), "observation": {"image": img},
                           "next": {"done": torch.tensor(done)[..., None], "success": torch.tensor(done)[..., None],
                                    "observation": {"image": img + 100}}}, batch_size=[2, 4])

    rec = VideoRecorder(max_videos=2)
    rec.on_batch(batch([[False, True, False, False], [False, False, False, False]], 0))
    rec.on_batch(batch([[False, False, False, False], [True, False, False, False]], 10))
    assert [len(frames) for frames, _ in rec.videos] == [3, 6]  # 2 steps + the last frame; 5 steps across batches + the last
    first = [int(step[0][0, 0, 0]) for step in rec.videos[0][0]]
    assert first == [0, 1, 101] and rec.videos[0][1] is True
    assert len(rec.videos) == 2 and 0 not in rec._open  # worker 0's next episode was not started: two videos asked for
