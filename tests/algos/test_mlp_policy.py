"""FlowMatchingMLPPolicy: interface, masking, fixed-noise sampling, CFG guidance."""

import pytest
import torch
from tensordict import TensorDict

from ript.algos import FlowMatchingMLPPolicy, FlowMatchingPolicy


def _policy(**kw):
    torch.manual_seed(0)
    return FlowMatchingMLPPolicy(obs_dim=4, action_dim=2, chunk_size=3, n_action_steps=2, hidden=32, depth=2, **kw)


def _td(b=5):
    return TensorDict({("observation", "state"): torch.randn(b, 4), "action_chunk": torch.randn(b, 3, 2)}, batch_size=[b])


def test_forward_writes_chunk_and_action():
    p = _policy()
    assert isinstance(p, FlowMatchingPolicy)
    td = p(_td())
    assert td["action_chunk"].shape == (5, 3, 2) and td["action"].shape == (5, 2, 2)
    assert torch.equal(td["action"], td["action_chunk"][:, :2])


def test_fixed_noise_is_reproducible_and_clamped():
    p = _policy(action_low=-0.1, action_high=0.1)
    td, noise = _td(), torch.randn(5, 3, 2)
    a, b = p.sample_actions(td, noise=noise), p.sample_actions(td, noise=noise)
    assert torch.equal(a, b) and a.abs().max() <= 0.1
    assert not torch.equal(a, p.sample_actions(td))


def test_mask_excludes_steps():
    p = _policy()
    td = _td()
    noise, time = torch.randn(5, 3, 2), torch.rand(5)
    full = p.per_sample_loss(td, noise=noise, time=time)
    td["action_mask"] = torch.tensor([[True, False, False]] * 5)
    first = p.per_sample_loss(td, noise=noise, time=time)
    # change the masked steps' target (u = noise - action) but keep x_t there unchanged: the masked loss must not move
    delta = torch.zeros(5, 3, 2)
    delta[:, 1:] = 5.0
    t = time.reshape(5, 1, 1)
    changed = td.clone()
    changed["action_chunk"] = td["action_chunk"] + delta
    noise2 = noise - (1 - t) / t * delta
    assert torch.allclose(first, p.per_sample_loss(changed, noise=noise2, time=time), atol=1e-5)
    assert not torch.allclose(full, p.per_sample_loss(changed.exclude("action_mask"), noise=noise2, time=time))
    assert first.shape == (5,) and not torch.allclose(first, full)


def test_guidance_zero_is_unconditional_and_labels_start_identical():
    p = _policy()
    td, noise = _td(), torch.randn(5, 3, 2)
    uncond = p.sample_actions(td, noise=noise, guidance=None)
    assert torch.allclose(p.sample_actions(td, noise=noise, guidance=0.0), uncond)
    # untrained label embeddings are zero: any guidance equals unconditional
    assert torch.allclose(p.sample_actions(td, noise=noise, guidance=3.0), uncond, atol=1e-6)
    with torch.no_grad():
        p.label_embed.weight[1].normal_()
    guided = p.sample_actions(td, noise=noise, guidance=2.0)
    assert torch.allclose(p.sample_actions(td, noise=noise, guidance=0.0), uncond)
    assert not torch.allclose(guided, uncond)


def test_one_step_guidance_follows_the_cfg_formula():
    """One Euler step from t=1: a(w) = noise - v_u - w (v_pos - v_u) = a(0) + w (a(1) - a(0)), velocities taken directly."""
    from ript.algos.policy import POSITIVE, UNCONDITIONAL

    p = _policy()
    with torch.no_grad():
        p.label_embed.weight.normal_()  # both labels differ from the zero-initialised start
    td, noise = _td(), torch.randn(5, 3, 2)
    obs, t1 = td["observation", "state"], torch.ones(5)
    with torch.no_grad():
        a_u = noise - p.velocity(obs, noise, t1, torch.full((5,), UNCONDITIONAL))
        a_p = noise - p.velocity(obs, noise, t1, torch.full((5,), POSITIVE))
    assert (a_p - a_u).abs().max() > 1e-2
    for w in (0.0, 1.0, 2.5, -0.5):
        torch.testing.assert_close(p.sample_actions(td, noise=noise, guidance=w, num_steps=1), a_u + w * (a_p - a_u), rtol=1e-5, atol=1e-6)


def test_bad_input():
    p = _policy(supports_cfg=False)
    with pytest.raises(ValueError, match="supports_cfg"):
        p.sample_actions(_td(), guidance=1.0)
    with pytest.raises(KeyError, match="obs_keys"):
        p.sample_actions(TensorDict({"x": torch.zeros(2, 4)}, batch_size=[2]))
    with pytest.raises(KeyError, match="action_chunk"):
        p.per_sample_loss(_td().exclude("action_chunk"))
    with pytest.raises(ValueError, match="n_action_steps"):
        FlowMatchingMLPPolicy(obs_dim=4, action_dim=2, chunk_size=3, n_action_steps=4)
