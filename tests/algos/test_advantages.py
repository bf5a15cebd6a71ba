"""Leave-one-out advantages and the group-assembling, dynamic-sampling transform."""

import pytest
import torch
from tensordict import TensorDict

from ript.algos import GroupLOOAdvantage, leave_one_out_advantages


@pytest.mark.parametrize("k", range(2, 17))
def test_loo_matches_hand_computation(k):
    g = torch.Generator().manual_seed(k)
    rewards = torch.randint(0, 2, (5, k), generator=g).float()
    adv = leave_one_out_advantages(rewards)
    for gi in range(5):
        for i in range(k):
            others = [rewards[gi, j].item() for j in range(k) if j != i]
            assert adv[gi, i].item() == pytest.approx(rewards[gi, i].item() - sum(others) / (k - 1), abs=1e-6)
    assert torch.allclose(adv.sum(-1), torch.zeros(5), atol=1e-5)  # zero mean per group


def test_loo_small_example():
    adv = leave_one_out_advantages(torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    assert torch.allclose(adv, torch.tensor([[1.0, -1 / 3, -1 / 3, -1 / 3]]))


def test_loo_bad_input():
    with pytest.raises(ValueError, match="K >= 2"):
        leave_one_out_advantages(torch.ones(3, 1))
    with pytest.raises(ValueError, match="NaN or inf"):
        leave_one_out_advantages(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match=r"\[groups, K\]"):
        leave_one_out_advantages(torch.ones(4))
    with pytest.raises(ValueError, match="group_size"):
        GroupLOOAdvantage(1)


def _batch(rows):
    """rows: per env, a list of (traj_id, group_id, done, success) steps -> [envs, T] collector-like batch."""
    t = len(rows[0])
    f = lambda i: torch.tensor([[step[i] for step in row] for row in rows])  # noqa: E731
    return TensorDict(
        {
            "group_id": f(1).unsqueeze(-1),
            "obs": torch.arange(len(rows) * t, dtype=torch.uint8).reshape(len(rows), t, 1),
            ("collector", "traj_ids"): f(0),
            ("next", "done"): f(2).bool().unsqueeze(-1),
            ("next", "success"): f(3).bool().unsqueeze(-1),
        },
        batch_size=[len(rows), t],
    )


def test_groups_split_across_batches_and_uninformative_dropped():
    tr = GroupLOOAdvantage(2)
    # env 0 runs group 7 (traj 0 then 2), env 1 runs group 9 (traj 1 then 3); trajectories span both batches
    b1 = _batch([[(0, 7, 0, 0), (0, 7, 0, 1), (0, 7, 1, 0), (2, 7, 0, 0)],
                 [(1, 9, 0, 0), (1, 9, 1, 0), (3, 9, 0, 0), (3, 9, 0, 0)]])
    assert tr(b1) is None  # no group complete yet
    assert tr.pending_trajectories == 2 and tr.pending_groups == 2
    b2 = _batch([[(2, 7, 0, 0), (2, 7, 1, 0), (4, 8, 0, 0), (4, 8, 0, 0)],
                 [(3, 9, 0, 0), (3, 9, 1, 0), (5, 10, 0, 0), (5, 10, 0, 0)]])
    out = tr(b2)
    # group 7: traj 0 succeeded (success mid-trajectory counts), traj 2 failed -> kept; group 9 all failed -> dropped
    assert out is not None and out.shape == (3 + 3,)
    assert set(out["group_id"].reshape(-1).tolist()) == {7}
    adv = out["advantage"].reshape(-1)
    assert torch.equal(adv, torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0, -1.0]))
    assert out["obs"].dtype == torch.uint8 and "next" not in out.keys()  # decision steps only
    s = tr.stats()
    assert (s["kept_groups"], s["dropped_groups"], s["trajectories"], s["successes"]) == (1, 1, 4, 1)
    assert s["success_rate"] == pytest.approx(0.25)
    assert tr.pending_trajectories == 2  # trajs 4 and 5 still running
    assert out["informative"].all()


def test_uniform_groups_kept_for_the_anchor_are_flagged():
    """drop_uninformative=False emits all-fail groups too, advantage 0 and informative False; counters still call them dropped."""
    tr = GroupLOOAdvantage(2, drop_uninformative=False)
    b1 = _batch([[(0, 7, 0, 0), (0, 7, 0, 1), (0, 7, 1, 0), (2, 7, 0, 0)],
                 [(1, 9, 0, 0), (1, 9, 1, 0), (3, 9, 0, 0), (3, 9, 0, 0)]])
    tr(b1)
    out = tr(_batch([[(2, 7, 0, 0), (2, 7, 1, 0), (4, 8, 0, 0), (4, 8, 0, 0)],
                     [(3, 9, 0, 0), (3, 9, 1, 0), (5, 10, 0, 0), (5, 10, 0, 0)]]))
    groups = out["group_id"].reshape(-1)
    assert out["informative"].reshape(-1).tolist() == (groups == 7).tolist()
    assert (out["advantage"].reshape(-1)[groups == 9] == 0).all()
    s = tr.stats()
    assert (s["kept_groups"], s["dropped_groups"], s["kept_steps"], s["uninformative_steps"]) == (1, 1, 6, int((groups == 9).sum()))


def test_without_traj_ids_splits_on_done():
    tr = GroupLOOAdvantage(3)
    b = _batch([[(0, 1, 0, 0), (0, 1, 1, 1), (0, 1, 1, 0), (0, 1, 0, 0), (0, 1, 1, 0)]]).exclude(("collector", "traj_ids"))
    out = tr(b)
    assert out.shape == (5,)
    a = 1 - 0.0  # success traj vs two failures: 1 - 0 = 1 ; failures: 0 - 1/2
    assert torch.allclose(out["advantage"].reshape(-1), torch.tensor([a, a, -0.5, -0.5, -0.5]))


def test_missing_key_is_clear():
    tr = GroupLOOAdvantage(2)
    with pytest.raises(KeyError, match="group_key"):
        tr(_batch([[(0, 1, 1, 0)]]).exclude("group_id"))
