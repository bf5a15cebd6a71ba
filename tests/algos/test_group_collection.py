"""The group collector: one outcome parser, workers chosen by task, groups run to completion on the toy context env."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from tensordict import TensorDict
from torchrl.collectors import Collector

from ript.algos import FlowMatchingMLPPolicy
from ript.algos.group_collection import Context, GroupCollector, assign_workers, finished_episodes
from ript.recipes.training.toy_env import make_context_toy_env


def _batch(done: list[list[bool]], success: list[list[bool]], gids: list[list[int]]) -> TensorDict:
    shape = (len(done), len(done[0]))
    return TensorDict({"group_id": torch.tensor(gids), "next": {"done": torch.tensor(done)[..., None],
                       "success": torch.tensor(success)[..., None], "step_count": torch.arange(shape[1]).expand(shape)[..., None]}},
                      batch_size=shape)


def test_finished_episodes_reads_each_done_step_once() -> None:
    batch = _batch([[False, True, False, True], [False, False, False, False]],
                   [[False, True, False, False], [True, False, False, False]], [[7, 7, 8, 8], [9, 9, 9, 9]])
    eps = finished_episodes(batch)
    assert [(e.group_id, e.success, e.worker, e.end, e.steps) for e in eps] == [(7, True, 0, 1, 1), (8, False, 0, 3, 3)]
    assert finished_episodes(batch[1]) == []  # a success before the end is not an ended episode
    assert [e.group_id for e in finished_episodes(batch[0])] == [7, 8]  # [time] batches too


def test_assign_workers_keeps_tasks_on_their_workers_and_balances_load() -> None:
    assert assign_workers([0, 0, 1, 1, 0], [[0], [1, 2]], 3) == [0, 0, 1, 2, 0]
    assert assign_workers([0] * 4, [[0, 1]], 2) == [0, 1, 0, 1]
    with pytest.raises(ValueError, match="no env worker can run task index 1"):
        assign_workers([1], [[0], []], 1)


def test_groups_run_to_completion_with_one_target_per_init_state() -> None:
    env = make_context_toy_env(3, n_action_steps=2, max_steps=4, action_dim=2)
    policy = FlowMatchingMLPPolicy(obs_dim=4, action_dim=2, chunk_size=2, n_action_steps=2, obs_keys=[("observation", "state")], hidden=16)
    collector = Collector(env, policy, frames_per_batch=3 * 4, total_frames=-1)
    source = SimpleNamespace(env=env, collector=collector, batches=iter(collector))
    groups = GroupCollector(source, worker_options=[[0, 1, 2], [0, 1, 2]], env_task_ids=[0, 5])
    seen: list[TensorDict] = []
    results = groups.collect({100: Context(0, 3), 101: Context(1, 4), 102: Context(0, 3)}, {100: 4, 101: 2, 102: 3},
                             on_batch=seen.append)
    assert {g: len(r) for g, r in results.items()} == {100: 4, 101: 2, 102: 3}
    steps = torch.cat([b.reshape(-1) for b in seen])
    mine = steps[steps.get("group_id") == 101]
    assert (mine.get("task_id") == 5).all() and (mine.get("init_state_id") == 4).all()  # the env got the task's own id
    targets = steps[steps.get("group_id") == 100].get(("observation", "state"))[..., 2:]  # state = [previous action, target]
    assert torch.allclose(targets, targets[:1].expand_as(targets))  # one init state, one target: a real group
    collector.shutdown()


def test_short_batches_still_complete_every_group_and_stop_soon_after() -> None:
    """Batches of one decision per worker: the loop bound counts batches per episode, and no batch runs past the last group."""
    torch.manual_seed(0)
    env = make_context_toy_env(2, n_action_steps=1, max_steps=4, action_dim=2)
    policy = FlowMatchingMLPPolicy(obs_dim=4, action_dim=2, chunk_size=1, n_action_steps=1, obs_keys=[("observation", "state")], hidden=16)
    collector = Collector(env, policy, frames_per_batch=2, total_frames=-1)  # one decision step per worker
    source = SimpleNamespace(env=env, collector=collector, batches=iter(collector))
    seen: list[TensorDict] = []
    short = GroupCollector(source, worker_options=[[0, 1]], env_task_ids=[0], batches_per_episode=1)
    assert len(short.collect({1: Context(0, 0)}, 4)[1]) < 4  # bounded as if a batch held an episode: cut short
    groups = GroupCollector(source, worker_options=[[0, 1]], env_task_ids=[0], batches_per_episode=4)
    assert len(groups.collect({2: Context(0, 1)}, 4, on_batch=seen.append)[2]) == 4
    assert len(seen) <= 2 * 4  # two episodes per worker of at most 4 steps: no batch after the group completed
    collector.shutdown()
