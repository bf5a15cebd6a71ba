"""relabel_chunks: the same sampling noise re-integrated with more Euler steps (FlowMatchingMLPPolicy)."""

import pytest
import torch
from tensordict import TensorDict

from ript.algos import FlowMatchingMLPPolicy, StepWindow, balance_by_key, make_replay_buffer, refill_replay_buffer, relabel_chunks


def _policy() -> FlowMatchingMLPPolicy:
    torch.manual_seed(0)
    return FlowMatchingMLPPolicy(obs_dim=4, action_dim=2, chunk_size=3, n_action_steps=2, hidden=32, depth=2, num_steps=2)


def _acted(policy: FlowMatchingMLPPolicy, b: int = 6) -> TensorDict:
    policy.record_noise = True
    try:
        return policy(TensorDict({("observation", "state"): torch.randn(b, 4)}, batch_size=[b]))
    finally:
        policy.record_noise = False


def test_recorded_noise_reproduces_the_acted_chunk():
    policy = _policy()
    td = _acted(policy)
    assert td["action_noise"].shape == (6, 3, 2)
    torch.testing.assert_close(policy.sample_actions(td, noise=td["action_noise"]), td["action_chunk"])
    assert "action_noise" not in policy(TensorDict({("observation", "state"): torch.randn(2, 4)}, batch_size=[2])).keys()


def test_relabel_integrates_the_same_noise_with_more_steps():
    policy = _policy()
    td = _acted(policy)
    before = td["action_chunk"].clone()
    same = relabel_chunks(policy, td, num_steps=2)
    torch.testing.assert_close(same["action_chunk"], before)  # its own step count: the acted chunk again
    fine = relabel_chunks(policy, td, num_steps=50, batch_size=4)  # two batches
    torch.testing.assert_close(fine["action_chunk"], policy.sample_actions(td, noise=td["action_noise"], num_steps=50))
    assert not torch.allclose(fine["action_chunk"], before)
    assert torch.equal(td["action_chunk"], before)  # the input is left as it was
    assert torch.equal(fine["action_noise"], td["action_noise"]) and policy.training


def test_relabel_refuses_data_without_noise_or_steps():
    policy = _policy()
    td = policy(TensorDict({("observation", "state"): torch.randn(3, 4)}, batch_size=[3]))
    with pytest.raises(KeyError, match="record_noise = True"):
        relabel_chunks(policy, td, num_steps=10)
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        relabel_chunks(policy, _acted(policy), num_steps=0)


def test_match_action_spread_sets_the_acting_noise_scale():
    from ript.algos import action_spread, match_action_spread

    policy = _policy()
    probe = TensorDict({("observation", "state"): torch.randn(64, 4)}, batch_size=[64])
    unit = torch.randn(4, 64, 3, 2, generator=torch.Generator().manual_seed(1))
    start = action_spread(policy, probe, unit)
    found, reached = match_action_spread(policy, probe, unit, 1.3 * start)
    assert found == pytest.approx(start)  # measured once at the old scale, then corrected
    assert abs(reached / (1.3 * start) - 1) < 0.03 and policy.noise_scale > 1.1
    assert action_spread(policy, probe, unit) == pytest.approx(reached)
    # acting uses the scale: recorded noise is scaled, and re-integrating it gives the acted chunk
    td = _acted(policy, b=400)
    assert td["action_noise"].std() == pytest.approx(policy.noise_scale, rel=0.1)
    torch.testing.assert_close(relabel_chunks(policy, td, num_steps=2)["action_chunk"], td["action_chunk"])
    with pytest.raises(ValueError, match="two noise draws"):
        action_spread(policy, probe, unit[:1])


def test_balance_by_key_gives_every_task_the_largest_tasks_count():
    tokens = torch.tensor([[1, 2]] * 6 + [[3, 4]] * 2 + [[5, 6]] * 3)  # three tasks: 6, 2 and 3 steps
    data = TensorDict({"observation": {"language_tokens": tokens}, "step": torch.arange(11)}, batch_size=[11])
    out = balance_by_key(data, ("observation", "language_tokens"), generator=torch.Generator().manual_seed(0))
    assert out.shape[0] == 18
    _, counts = torch.unique(out["observation", "language_tokens"], dim=0, return_counts=True)
    assert counts.tolist() == [6, 6, 6]
    assert set(out["step"].tolist()) == set(range(11))  # no row is dropped
    for task in ([3, 4], [5, 6]):  # extra rows are copies of that task's own rows
        rows = (out["observation", "language_tokens"] == torch.tensor(task)).all(-1)
        original = (tokens == torch.tensor(task)).all(-1).nonzero().reshape(-1)
        assert set(out["step"][rows].tolist()) == set(original.tolist())


def test_balance_by_key_leaves_one_task_alone():
    data = TensorDict({"task": torch.zeros(4, 1)}, batch_size=[4])
    assert balance_by_key(data, "task") is data


def test_step_window_keeps_the_last_iterations_that_kept_steps():
    window = StepWindow(2)
    assert window.gather() == (None, 0)
    for i, n in enumerate((3, 0, 2, 4)):  # the iteration that kept nothing leaves the window as it was
        window.add(TensorDict({"it": torch.full((n,), i)}, batch_size=[n]))
    data, added = window.gather()
    assert data["it"].tolist() == [2, 2, 3, 3, 3, 3] and added == 0
    with pytest.raises(ValueError, match="iterations must be >= 1"):
        StepWindow(0)


def test_step_window_balances_tasks_over_the_whole_window():
    window = StepWindow(3, balance_key="task_id", generator=torch.Generator().manual_seed(0))
    window.add(TensorDict({"task_id": torch.tensor([0, 0, 0, 1])}, batch_size=[4]))
    window.add(TensorDict({"task_id": torch.tensor([0, 0, 1])}, batch_size=[3]))
    data, added = window.gather()
    assert added == 3 and torch.bincount(data["task_id"]).tolist() == [5, 5]
    again, _ = window.gather(generator=torch.Generator().manual_seed(0))  # a per-call generator draws the same rows
    assert torch.equal(again["task_id"], data["task_id"])


def test_refill_with_no_steps_empties_the_buffer():
    buffer = make_replay_buffer(8)
    assert refill_replay_buffer(buffer, TensorDict({"a": torch.zeros(3, 2)}, batch_size=[3])) == 3
    assert refill_replay_buffer(buffer, TensorDict({"a": torch.zeros(0, 2)}, batch_size=[0])) == 0 and len(buffer) == 0
