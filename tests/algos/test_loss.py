"""RIPTCFGLoss with the MLP policy: weights, gradients, CFG label dropout, bad input."""

import pytest
import torch
from tensordict import TensorDict

from ript.algos import FlowMatchingMLPPolicy, RIPTCFGLoss
from ript.algos.policy import NEGATIVE, POSITIVE, UNCONDITIONAL


def _policy():
    torch.manual_seed(0)
    return FlowMatchingMLPPolicy(obs_dim=4, action_dim=2, chunk_size=3, hidden=32, depth=2)


def _td(b=16, adv=None):
    return TensorDict(
        {
            ("observation", "state"): torch.randn(b, 4),
            "action_chunk": torch.randn(b, 3, 2),
            "advantage": (torch.randn(b, 1) if adv is None else adv),
        },
        batch_size=[b],
    )


def test_equals_plain_flow_matching_when_weights_are_one():
    p = _policy()
    td = _td(adv=torch.zeros(16, 1))  # equal advantages -> all weights 1
    loss = RIPTCFGLoss(p, mode="weighted")
    torch.manual_seed(1)
    out = loss(td)
    torch.manual_seed(1)
    plain = p.per_sample_loss(td).mean()
    assert torch.allclose(out["loss_ript_cfg"], plain)
    assert out["weight_min"] == 1 and out["weight_max"] == 1


def test_weights_are_awr_bounded_and_ordered():
    loss = RIPTCFGLoss(_policy(), temperature=0.5, w_max=3.0)
    adv = torch.tensor([1.0, -1 / 7, -1 / 7, 0.5, -0.5, 0.0])
    w = loss.advantage_weights(adv)
    assert (w > 0).all() and (w <= 3.0).all()
    order = torch.argsort(adv)
    assert (w[order].diff() >= 0).all()  # monotone in the advantage
    a_n = adv / (adv.std() + 1e-6)
    raw = torch.exp(a_n / 0.5)
    assert torch.allclose(w, (raw / raw.mean()).clamp(max=3.0))


@pytest.mark.parametrize("mode", ["weighted", "cfg"])
def test_gradients_reach_every_parameter_and_step_changes_them(mode):
    p = _policy()
    loss = RIPTCFGLoss(p, mode=mode, p_uncond=0.3)
    out = loss(_td(64))
    assert set(out.keys()) >= {"loss_ript_cfg", "fm_loss_mean", "weight_mean", "weight_min", "weight_max", "frac_positive"}
    out["loss_ript_cfg"].backward()
    # in weighted mode no label is used, so the label table gets no gradient (it is not used)
    trainable = {n: q for n, q in p.named_parameters() if not (mode == "weighted" and n.startswith("label_embed"))}
    for name, q in trainable.items():
        assert q.grad is not None and q.grad.abs().sum() > 0, name
    before = {n: q.detach().clone() for n, q in trainable.items()}
    torch.optim.SGD(p.parameters(), lr=0.1).step()
    for name, q in trainable.items():
        assert not torch.equal(before[name], q), name


def test_cfg_labels_and_unconditional_fraction():
    p = _policy()
    seen = []
    orig = p.per_sample_loss

    def spy(td, **kw):
        seen.append(kw["optimality"])
        return orig(td, **kw)

    p.per_sample_loss = spy
    loss = RIPTCFGLoss(p, mode="cfg", p_uncond=0.25)
    adv = torch.cat([torch.ones(2000, 1), -torch.ones(2000, 1)])
    td = _td(4000, adv=adv)
    torch.manual_seed(0)
    out = loss(td)
    labels = seen[0]
    frac = (labels == UNCONDITIONAL).float().mean().item()
    assert abs(frac - 0.25) < 4 * (0.25 * 0.75 / 4000) ** 0.5  # within sampling error
    assert out["frac_unconditional"].item() == pytest.approx(frac)
    assert set(labels[:2000].tolist()) <= {POSITIVE, UNCONDITIONAL}
    assert set(labels[2000:].tolist()) <= {NEGATIVE, UNCONDITIONAL}


def test_set_keys_and_bad_input():
    p = _policy()
    loss = RIPTCFGLoss(p)
    td = _td().rename_key_("advantage", "adv")
    with pytest.raises(KeyError, match="set_keys"):
        loss(td)
    loss.set_keys(advantage="adv")
    # moved entries give the loss of the default keys: same seed, so the same flow-matching noise and time draws
    loss.set_keys(action_chunk="chunk")
    default = td.clone().rename_key_("adv", "advantage")
    torch.manual_seed(7)
    moved = loss(td.clone().rename_key_("action_chunk", "chunk"))["loss_ript_cfg"]
    torch.manual_seed(7)
    assert torch.equal(moved, RIPTCFGLoss(p)(default)["loss_ript_cfg"])
    torch.manual_seed(8)
    assert not torch.equal(moved, RIPTCFGLoss(p)(default)["loss_ript_cfg"])  # the draws matter: the seed is what makes them equal
    loss.set_keys(action_chunk="action_chunk")
    td["adv"][0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        loss(td)
    with pytest.raises(KeyError, match="action_chunk"):
        RIPTCFGLoss(p)(_td().exclude("action_chunk"))
    with pytest.raises(ValueError, match="mode"):
        RIPTCFGLoss(p, mode="ppo")
    no_cfg = FlowMatchingMLPPolicy(obs_dim=4, action_dim=2, chunk_size=3, supports_cfg=False)
    with pytest.raises(ValueError, match="CFG head"):
        RIPTCFGLoss(no_cfg, mode="cfg")
    with pytest.raises(TypeError, match="FlowMatchingPolicy"):
        RIPTCFGLoss(torch.nn.Linear(2, 2))


def test_reference_anchor_adds_the_fm_loss_on_the_references_samples_and_trains_only_the_policy():
    import copy

    p = _policy()
    ref = copy.deepcopy(p)
    with pytest.raises(ValueError, match="needs a reference policy"):
        RIPTCFGLoss(p, anchor_coef=0.5)
    loss = RIPTCFGLoss(p, reference=ref, anchor_coef=0.5)
    # the frozen copy is not a parameter of the loss (optimisers and DDP never see it)
    assert {id(q) for q in loss.parameters()} == {id(q) for q in p.parameters()}
    assert not any(q.requires_grad for q in ref.parameters())
    td = _td(adv=torch.zeros(16, 1))
    torch.manual_seed(3)
    out = loss(td)
    # replay the same draws: the weighted term (all weights 1), then the reference's chunks and their loss
    torch.manual_seed(3)
    plain = p.per_sample_loss(td).mean()
    ref_chunk = ref.sample_actions(td)
    anchor = p.per_sample_loss(td.clone().set("action_chunk", ref_chunk)).mean()
    torch.testing.assert_close(out["loss_ript_cfg"], plain + 0.5 * anchor)
    torch.testing.assert_close(out["anchor_loss"], anchor.detach())
    out["loss_ript_cfg"].backward()
    assert any(q.grad is not None and q.grad.abs().sum() > 0 for q in p.parameters())
    assert all(q.grad is None for q in ref.parameters())


def test_uninformative_steps_count_for_the_anchor_only():
    """informative=False rows (uniform groups kept for the anchor) leave the advantage term, weights included, untouched."""
    import copy

    p = _policy()
    loss = RIPTCFGLoss(p, temperature=0.5, reference=copy.deepcopy(p), anchor_coef=0.5)
    td = _td(b=12)
    td.set("fm_noise", torch.randn(12, 3, 2))
    td.set("fm_time", torch.rand(12))
    informative = torch.arange(12) < 8
    td.set("informative", informative.reshape(12, 1))
    torch.manual_seed(4)  # the reference's samples
    out = loss(td)
    # the advantage term: exactly the loss of the informative rows alone (their own weight statistics)
    sub = td[:8].exclude("informative")
    main = (loss.advantage_weights(sub["advantage"]) * p.per_sample_loss(sub, noise=sub["fm_noise"], time=sub["fm_time"])).mean()
    # the anchor: every row, replayed with the same reference draws
    torch.manual_seed(4)
    anchor = loss._anchor_loss(td.exclude("informative")).mean()
    torch.testing.assert_close(out["loss_ript_cfg"], main + 0.5 * anchor)
    # an uninformative row's advantage is ignored
    td2 = td.clone()
    td2["advantage"][10] = 50.0
    torch.manual_seed(4)
    torch.testing.assert_close(loss(td2)["loss_ript_cfg"], out["loss_ript_cfg"])


def test_positive_only_trains_on_successes_alone():
    """Filtered self-imitation: failures (A <= 0) add nothing, the successes' weights are normalised among themselves."""
    p = _policy()
    adv = torch.tensor([1.0, -1 / 3, -1 / 3, -1 / 3, 2 / 3, 2 / 3, -2 / 3, -2 / 3]).unsqueeze(-1)
    td = _td(8, adv)
    noise, time = torch.randn(8, 3, 2), torch.rand(8)
    td.set("fm_noise", noise)
    td.set("fm_time", time)
    loss = RIPTCFGLoss(p, temperature=2.0, w_max=20.0, positive_only=True)
    out = loss(td)
    pos = adv.reshape(-1) > 0
    per_sample = p.per_sample_loss(td, noise=noise, time=time)
    w_pos = loss.advantage_weights(adv.reshape(-1)[pos])  # statistics over the successes only
    assert torch.allclose(out["loss_ript_cfg"], (w_pos * per_sample[pos]).sum() / pos.sum(), atol=1e-6)
    assert out["frac_positive"] == 1.0
    # a failure's chunk has no influence on the loss or its gradient
    moved = td.clone()
    moved["action_chunk"][~pos] += 5.0
    assert torch.allclose(loss(moved)["loss_ript_cfg"], out["loss_ript_cfg"], atol=1e-6)
    # a batch without a success trains on nothing (loss 0, not NaN)
    none = loss(_td(4, -torch.ones(4, 1) / 3))
    assert none["loss_ript_cfg"] == 0
    with pytest.raises(ValueError, match="positive_only applies to mode='weighted'"):
        RIPTCFGLoss(p.__class__(obs_dim=4, action_dim=2, chunk_size=3, hidden=8, depth=1, supports_cfg=True), mode="cfg", positive_only=True)
