"""The update step (update_policy): the replay buffer, accumulation equal to one large batch, clipping, non-finite skips."""

import pytest
import torch
from tensordict import TensorDict

from ript.algos import FlowMatchingMLPPolicy, RIPTCFGLoss, make_replay_buffer, refill_replay_buffer, update_policy


def _data(n=40):
    return TensorDict(
        {
            ("observation", "state"): torch.randn(n, 4),
            ("observation", "image"): torch.randint(0, 255, (n, 3, 8, 8), dtype=torch.uint8),
            "action_chunk": torch.randn(n, 3, 2),
            "advantage": torch.randn(n, 1),
        },
        batch_size=[n],
    )


def test_replay_buffer_keeps_uint8_and_refills():
    buf = make_replay_buffer(100)
    assert refill_replay_buffer(buf, _data(40)) == 40
    assert buf[torch.arange(5)]["observation", "image"].dtype == torch.uint8
    assert refill_replay_buffer(buf, _data(10)) == 10  # on-policy: replaced, not appended
    assert refill_replay_buffer(buf, None) == 0
    with pytest.raises(ValueError, match="capacity"):
        refill_replay_buffer(make_replay_buffer(5), _data(10))


def test_update_policy_steps_accumulates_and_skips_nonfinite():
    torch.manual_seed(0)
    policy = FlowMatchingMLPPolicy(obs_dim=4, action_dim=2, chunk_size=3, hidden=16, depth=1)
    loss = RIPTCFGLoss(policy)
    opt = torch.optim.Adam(policy.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    buf = make_replay_buffer(100)
    refill_replay_buffer(buf, _data(40))
    before = [p.detach().clone() for p in policy.parameters()]
    m = update_policy(loss, buf, opt, epochs=2, minibatch_size=10, grad_accum_steps=2, scheduler=sched)
    assert m["optimizer_steps"] == 4 and m["skipped_nonfinite"] == 0  # 2 epochs x 4 minibatches / 2 accumulated
    assert m["lr"] == pytest.approx(1e-2 * 0.5**4)
    assert any(not torch.equal(b, p) for b, p in zip(before, policy.parameters()))
    bad = _data(40)
    bad["action_chunk"][0] = float("inf")  # one minibatch gets a non-finite loss
    refill_replay_buffer(buf, bad)
    m = update_policy(loss, buf, opt, epochs=1, minibatch_size=10)
    assert m["skipped_nonfinite"] == 1 and m["optimizer_steps"] == 3
    assert all(torch.isfinite(p).all() for p in policy.parameters())
    buf.empty()
    with pytest.raises(ValueError, match="empty"):
        update_policy(loss, buf, opt)


def _fixed_draw_data(n: int, seed: int = 0) -> TensorDict:
    """Decision steps whose flow-matching noise/time and CFG label dropout are fixed, so any split of them gives the same losses."""
    g = torch.Generator().manual_seed(seed)
    td = _data(n)
    td["advantage"] = torch.randn(n, 1, generator=g) * 2.0
    td["fm_noise"] = torch.randn(n, 3, 2, generator=g)
    td["fm_time"] = torch.rand(n, generator=g) * 0.9 + 0.05
    td["label_drop"] = torch.rand(n, generator=g) < 0.3
    return td


def _flat(policy: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in policy.parameters()])


@pytest.mark.parametrize("mode", ["weighted", "cfg"])
def test_accumulation_equals_one_large_batch(mode):
    """23 samples, micro-batches of 5, 2 accumulated: steps on 10, 10 and a partial 3 == plain steps on batches of 10, 10, 3."""
    n, b, k, seed = 23, 5, 2, 3
    data = _fixed_draw_data(n)

    def fresh():
        torch.manual_seed(0)
        policy = FlowMatchingMLPPolicy(obs_dim=4, action_dim=2, chunk_size=3, hidden=16, depth=1, supports_cfg=mode == "cfg")
        # a small temperature and w_max make the exponential weights' statistics and their clipping matter
        return policy, RIPTCFGLoss(policy, mode=mode, temperature=0.5, w_max=2.0)

    policy, loss = fresh()
    buf = make_replay_buffer(100)
    refill_replay_buffer(buf, data)
    opt = torch.optim.SGD(policy.parameters(), lr=0.2)
    m = update_policy(loss, buf, opt, minibatch_size=b, grad_accum_steps=k, max_grad_norm=None, generator=torch.Generator().manual_seed(seed))
    assert m["optimizer_steps"] == 3

    # reference: the loss alone on each effective batch (its own statistics, plain means), one SGD step each
    ref_policy, ref_loss = fresh()
    ref_opt = torch.optim.SGD(ref_policy.parameters(), lr=0.2)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))  # update_policy's shuffle
    losses = []
    for start in range(0, n, b * k):
        ref_opt.zero_grad()
        out = ref_loss(data[order[start : start + b * k]])
        out["loss_ript_cfg"].backward()
        ref_opt.step()
        losses.append(float(out["loss_ript_cfg"].detach()))
    assert [len(order[s : s + b * k]) for s in range(0, n, b * k)] == [10, 10, 3]
    assert not torch.equal(_flat(ref_policy), _flat(fresh()[0]))
    torch.testing.assert_close(_flat(policy), _flat(ref_policy), rtol=1e-5, atol=1e-6)
    assert m["loss_ript_cfg"] == pytest.approx(sum(losses) / 3, rel=1e-5)


def test_accumulation_skips_a_non_finite_micro_batch_without_shrinking_the_step():
    """cfg mode (weights 1): the group's gradient after a skipped micro-batch is the mean over the kept samples."""
    n, b = 10, 5
    data = _fixed_draw_data(n)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    bad = data.clone()
    bad["action_chunk"][order[7]] = float("inf")  # in the second micro-batch

    def fresh():
        torch.manual_seed(0)
        policy = FlowMatchingMLPPolicy(obs_dim=4, action_dim=2, chunk_size=3, hidden=16, depth=1)
        return policy, RIPTCFGLoss(policy, mode="cfg")

    policy, loss = fresh()
    buf = make_replay_buffer(100)
    refill_replay_buffer(buf, bad)
    m = update_policy(loss, buf, torch.optim.SGD(policy.parameters(), lr=0.2), minibatch_size=b, grad_accum_steps=2, max_grad_norm=None, generator=torch.Generator().manual_seed(0))
    assert m["optimizer_steps"] == 1 and m["skipped_nonfinite"] == 1
    ref_policy, ref_loss = fresh()
    ref_opt = torch.optim.SGD(ref_policy.parameters(), lr=0.2)
    ref_loss(data[order[:b]])["loss_ript_cfg"].backward()
    ref_opt.step()
    torch.testing.assert_close(_flat(policy), _flat(ref_policy), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ratio", [0.3, 3.0], ids=["clipped", "below"])
def test_clipping_bounds_the_applied_gradient(ratio):
    """One SGD(lr=1) step: applied = params before - after; its norm is max_grad_norm when clipped, the raw gradient when below."""
    data = _fixed_draw_data(12)

    def fresh():
        torch.manual_seed(0)
        policy = FlowMatchingMLPPolicy(obs_dim=4, action_dim=2, chunk_size=3, hidden=16, depth=1, supports_cfg=False)
        return policy, RIPTCFGLoss(policy)

    ref_policy, ref_loss = fresh()
    ref_loss(data)["loss_ript_cfg"].backward()
    grad = torch.cat([p.grad.reshape(-1) for p in ref_policy.parameters()])
    raw_norm = float(grad.norm())
    max_norm = ratio * raw_norm
    policy, loss = fresh()
    before = _flat(policy)
    buf = make_replay_buffer(100)
    refill_replay_buffer(buf, data)
    m = update_policy(loss, buf, torch.optim.SGD(policy.parameters(), lr=1.0), minibatch_size=12, max_grad_norm=max_norm)
    applied = before - _flat(policy)
    assert m["grad_norm_preclip"] == pytest.approx(raw_norm, rel=1e-5)  # logged before clipping
    assert float(applied.norm()) <= max_norm * (1 + 1e-5)
    if ratio < 1:
        assert float(applied.norm()) == pytest.approx(max_norm, rel=1e-4)
        torch.testing.assert_close(applied, grad * (max_norm / raw_norm), rtol=1e-4, atol=1e-7)  # same direction
    else:
        torch.testing.assert_close(applied, grad, rtol=1e-5, atol=1e-7)  # unchanged
