"""PI0 transforms: geometry, state/action maps, tokens and specs on a hand-made raw LIBERO-like env."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import Bounded, Composite, NonTensor, Unbounded
from torchrl.envs import Compose, EnvBase, TransformedEnv
from torchrl.envs.utils import check_env_specs

from ript.envs import keys
from ript.envs.geometry import quat_to_axis_angle, resize_with_pad, rotate_180
from ript.envs.normalization import NormStats
from ript.envs.transforms import (
    PI0ActionTransform,
    PI0ImageTransform,
    PI0StateTransform,
    PI0TokenizeTransform,
    make_pi0_transforms,
)

TASK_TEXT = "put the bowl on the plate"


def make_stats(mode: str = "mean_std") -> NormStats:
    g = torch.Generator().manual_seed(0)
    return NormStats(
        state_mean=torch.randn(8, generator=g) * 0.1,
        state_std=torch.rand(8, generator=g) + 0.1,
        action_mean=torch.randn(7, generator=g) * 0.1,
        action_std=torch.rand(7, generator=g) * 0.5 + 0.1,
        state_q01=-torch.rand(8, generator=g) - 0.5,
        state_q99=torch.rand(8, generator=g) + 0.5,
        action_q01=-torch.rand(7, generator=g) * 0.8,
        action_q99=torch.rand(7, generator=g) * 0.8 + 0.1,
        state_mode=mode,
        action_mode=mode,
    )


class RawLiberoLikeEnv(EnvBase):
    """Same raw keys/specs as LiberoEnv (keys.py); random frames; remembers the last action it got."""

    def __init__(self, height: int = 20, width: int = 32, chunk: int | None = 2) -> None:
        super().__init__(batch_size=torch.Size([]))
        img = Bounded(0, 255, shape=(3, height, width), dtype=torch.uint8)
        self.observation_spec = Composite(
            {
                keys.AGENTVIEW_IMAGE: img,
                keys.EYE_IN_HAND_IMAGE: img.clone(),
                keys.EEF_POS: Unbounded(shape=(3,), dtype=torch.float32),
                keys.EEF_QUAT: Unbounded(shape=(4,), dtype=torch.float32),
                keys.GRIPPER_QPOS: Unbounded(shape=(2,), dtype=torch.float32),
                keys.TASK: NonTensor(shape=(), example_data=TASK_TEXT),
            }
        )
        self.action_spec = Bounded(-1.0, 1.0, shape=(chunk, 7) if chunk else (7,), dtype=torch.float32)
        self.reward_spec = Unbounded(shape=(1,), dtype=torch.float32)
        self.last_action: torch.Tensor | None = None

    def _obs(self) -> TensorDict:
        td = self.observation_spec.rand()
        q = torch.randn(4)
        td.set(keys.EEF_QUAT, q / q.norm())
        td.set(keys.TASK, TASK_TEXT)
        return td

    def _reset(self, tensordict=None):
        td = self._obs()
        td.set("done", torch.zeros(1, dtype=torch.bool))
        td.set("terminated", torch.zeros(1, dtype=torch.bool))
        return td

    def _step(self, tensordict):
        self.last_action = tensordict.get("action").clone()
        td = self._obs()
        td.set("reward", torch.zeros(1))
        td.set("done", torch.zeros(1, dtype=torch.bool))
        td.set("terminated", torch.zeros(1, dtype=torch.bool))
        return td

    def _set_seed(self, seed):
        torch.manual_seed(seed if seed is not None else 0)


def make_tokenizer():
    """A tiny local word-level tokenizer with BOS and PAD, built offline (stands in for PaliGemma's)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<bos>", "<unk>", "\n"] + sorted(set(("put the bowl on plate open drawer " + TASK_TEXT).split()))
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(" ", behavior="removed"), pre_tokenizers.Split("\n", behavior="isolated")]
    )
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", pad_token="<pad>", unk_token="<unk>")


# ---------------------------------------------------------------- geometry
def _quat_from_axis_angle(axis, angle: float) -> torch.Tensor:
    axis = torch.tensor(axis, dtype=torch.float64)
    axis = axis / axis.norm()
    return torch.cat([axis * math.sin(angle / 2), torch.tensor([math.cos(angle / 2)], dtype=torch.float64)])


@pytest.mark.parametrize(
    "axis,angle",
    [([1, 0, 0], 0.3), ([0, 1, 1], 1.7), ([1, -2, 0.5], math.pi - 1e-4), ([0, 0, 1], math.pi),
     ([1, 1, 1], math.pi + 0.2), ([0.3, -1, 0.2], 1e-3), ([1, 0, 0], 1e-6)],
)
def test_quat_to_axis_angle_matches_construction(axis, angle):
    q = _quat_from_axis_angle(axis, angle)
    expected = torch.tensor(axis, dtype=torch.float64) / torch.tensor(axis, dtype=torch.float64).norm() * angle
    got = quat_to_axis_angle(q)
    assert got.dtype == torch.float64
    assert torch.allclose(got, expected, atol=1e-9), (got, expected)


def test_quat_to_axis_angle_identity_edges_and_scipy():
    from scipy.spatial.transform import Rotation

    # w = +-1 exactly: zero vector (robosuite's branch), float32 in -> float32 out.
    ident = torch.tensor([[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, -1.0]])
    out = quat_to_axis_angle(ident)
    assert out.dtype == torch.float32 and torch.equal(out, torch.zeros(2, 3))
    # Random unit quaternions with w >= 0 agree with scipy's rotation vector (angle <= pi there).
    q = torch.randn(64, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    q = q / q.norm(dim=-1, keepdim=True)
    q = torch.where(q[:, 3:] < 0, -q, q)
    expected = torch.from_numpy(Rotation.from_quat(q.numpy()).as_rotvec())
    assert torch.allclose(quat_to_axis_angle(q), expected, atol=1e-9)
    # No sign canonicalisation: -q is the same rotation but maps to angle 2*pi - theta about -axis.
    neg = quat_to_axis_angle(-q)
    theta = expected.norm(dim=-1, keepdim=True)
    assert torch.allclose(neg, -expected / theta * (2 * math.pi - theta), atol=1e-9)
    with pytest.raises(ValueError, match=r"\[\.\.\., 4\]"):
        quat_to_axis_angle(torch.zeros(3))


def test_rotate_180_is_flip_of_both_axes_and_an_involution():
    img = torch.arange(2 * 3 * 4 * 5, dtype=torch.uint8).reshape(2, 3, 4, 5)
    rot = rotate_180(img)
    assert rot[0, 1, 0, 0] == img[0, 1, 3, 4] and rot[1, 2, 3, 1] == img[1, 2, 0, 3]
    assert torch.equal(rotate_180(rot), img)


def test_resize_with_pad_wide_image_pads_top_and_bottom_with_black():
    img = torch.full((3, 50, 100), 200, dtype=torch.uint8)
    out = resize_with_pad(img, 64, 64)
    assert out.shape == (3, 64, 64) and out.dtype == torch.uint8
    # 100x50 -> 64x32, centred: 16 black rows on top and 16 at the bottom.
    assert (out[:, :16] == 0).all() and (out[:, 48:] == 0).all() and (out[:, 16:48] == 200).all()


def test_resize_with_pad_tall_odd_padding_goes_right():
    img = torch.full((1, 3, 60, 25), 7, dtype=torch.uint8)
    out = resize_with_pad(img, 30, 30)
    # ratio 2 -> 30x12: 18 columns of padding, 9 left and 9 right; odd case below.
    assert (out[..., :9] == 0).all() and (out[..., 21:] == 0).all() and (out[..., 9:21] == 7).all()
    out = resize_with_pad(torch.full((3, 60, 26), 7, dtype=torch.uint8), 30, 30)  # 30x13: pads 8 left, 9 right
    assert (out[..., :8] == 0).all() and (out[..., 8:21] == 7).all() and (out[..., 21:] == 0).all()


def test_resize_with_pad_matches_lerobot_within_one_level():
    from lerobot.policies.common.vla_utils import resize_with_pad_torch

    g = torch.Generator().manual_seed(0)
    for h, w in [(256, 256), (128, 256), (300, 180), (224, 224)]:
        img = torch.randint(0, 256, (2, 3, h, w), dtype=torch.uint8, generator=g)
        ours = resize_with_pad(img, 224, 224)
        ref = resize_with_pad_torch((img.float() / 255).permute(0, 2, 3, 1), 224, 224).permute(0, 3, 1, 2) * 255
        assert ours.shape == ref.shape
        assert (ours.float() - ref).abs().max() <= 0.5 + 1e-3


# ---------------------------------------------------------- normalisation
@pytest.mark.parametrize("mode", ["mean_std", "quantile"])
def test_state_and_action_round_trip(mode):
    stats = make_stats(mode)
    x = torch.randn(5, 8)
    assert torch.allclose(stats.unnormalize_state(stats.normalize_state(x)), x, atol=1e-5)
    a = torch.rand(4, 7) * 1.6 - 0.8
    assert torch.allclose(stats.unnormalize_action(stats.normalize_action(a)), a, atol=1e-5)


def test_action_transform_round_trip_clip_and_shapes():
    stats = make_stats("mean_std")
    t = PI0ActionTransform(stats)
    raw = torch.rand(3, 7) * 1.8 - 0.9
    padded = torch.nn.functional.pad(stats.normalize_action(raw), (0, 25), value=5.0)  # padding dims are ignored
    td = t.inv(TensorDict({"action": padded}, []))
    assert td["action"].shape == (3, 7)
    assert torch.allclose(td["action"], raw, atol=1e-5)
    big = torch.full((32,), 100.0)
    out = t.inv(TensorDict({"action": big}, []))["action"]
    assert out.shape == (7,) and torch.equal(out, torch.ones(7))
    with pytest.raises(ValueError, match=r"\[\.\.\., 32\]"):
        t.inv(TensorDict({"action": torch.zeros(7)}, []))


# ------------------------------------------------------------ transformed env
def test_transformed_env_specs_and_values():
    stats = make_stats("quantile")
    base = RawLiberoLikeEnv(height=20, width=32, chunk=2)
    env = TransformedEnv(base, Compose(*make_pi0_transforms(stats, image_size=16, tokenizer=make_tokenizer(), tokenizer_max_length=12)))
    check_env_specs(env, seed=0)
    obs_spec = env.observation_spec
    assert obs_spec[keys.PI0_IMAGE].shape == (3, 16, 16) and obs_spec[keys.PI0_IMAGE].dtype == torch.uint8
    assert obs_spec[keys.PI0_STATE].shape == (32,)
    assert keys.AGENTVIEW_IMAGE not in obs_spec.keys(True, True)
    assert env.action_spec.shape == (2, 32) and base.action_spec.shape == (2, 7)

    td = env.reset()
    assert td[keys.LANG_TOKENS].shape == (12,) and td[keys.LANG_MASK].dtype == torch.bool
    assert td[keys.LANG_MASK].sum() == len(TASK_TEXT.split()) + 2  # <bos> + words + "\n"

    # The state equals a direct computation from the raw frame.
    raw = base._obs()
    expected = stats.normalize_state(torch.cat([raw[keys.EEF_POS], quat_to_axis_angle(raw[keys.EEF_QUAT]), raw[keys.GRIPPER_QPOS]]))
    out = PI0StateTransform(stats)(raw.clone())
    assert torch.allclose(out[keys.PI0_STATE][:8], expected, atol=1e-6) and (out[keys.PI0_STATE][8:] == 0).all()

    # The image is rotated once, then resized.
    raw_img = base._obs()
    ref_img = resize_with_pad(rotate_180(raw_img[keys.AGENTVIEW_IMAGE]), 16, 16)
    assert torch.equal(PI0ImageTransform(image_size=16)(raw_img.clone())[keys.PI0_IMAGE], ref_img)

    # The simulator sees the unnormalised, unpadded action; the rollout keeps the padded one.
    action = torch.nn.functional.pad(stats.normalize_action(torch.full((2, 7), 0.25)), (0, 25))
    td.set("action", action)
    td = env.step(td)
    assert td["action"].shape == (2, 32)
    assert torch.allclose(base.last_action, torch.full((2, 7), 0.25), atol=1e-5)


def test_single_action_env_and_batched_tokens():
    stats = make_stats()
    env = TransformedEnv(RawLiberoLikeEnv(chunk=None), Compose(*make_pi0_transforms(stats, image_size=24, keep_raw_images=True)))
    check_env_specs(env, seed=0)
    assert env.action_spec.shape == (32,)
    assert keys.AGENTVIEW_IMAGE in env.observation_spec.keys(True, True)
    tok = PI0TokenizeTransform(make_tokenizer(), max_length=10)
    td = TensorDict({keys.TASK: ["open drawer", TASK_TEXT]}, [2])
    td = tok(td)
    assert td[keys.LANG_TOKENS].shape == (2, 10)
    assert td[keys.LANG_MASK].sum(-1).tolist() == [4, len(TASK_TEXT.split()) + 2]


def test_bad_inputs_raise_clear_errors():
    stats = make_stats()
    with pytest.raises(TypeError, match="NormStats"):
        PI0StateTransform({"mean": 0})
    with pytest.raises(ValueError, match="uint8"):
        PI0ImageTransform(image_size=8)(TensorDict({keys.AGENTVIEW_IMAGE: torch.zeros(3, 8, 8), keys.EYE_IN_HAND_IMAGE: torch.zeros(3, 8, 8)}, []))
    with pytest.raises(ValueError, match="action_dim"):
        TransformedEnv(RawLiberoLikeEnv(), PI0ActionTransform(stats, action_dim=6)).action_spec
    with pytest.raises(KeyError, match="eef"):
        PI0StateTransform(stats)(TensorDict({}, []))


def test_batched_env_outside_transforms():
    """Transforms over a SerialEnv (as over a ParallelEnv): batch dims lead every spec and value."""
    from torchrl.envs import SerialEnv

    stats = make_stats()
    env = TransformedEnv(SerialEnv(2, lambda: RawLiberoLikeEnv(chunk=3)),
                         Compose(*make_pi0_transforms(stats, image_size=16, tokenizer=make_tokenizer(), tokenizer_max_length=10)))
    try:
        check_env_specs(env, seed=0)
        assert env.action_spec.shape == (2, 3, 32)
        td = env.rollout(2)
        assert td[keys.PI0_IMAGE].shape == (2, 2, 3, 16, 16) and td[keys.PI0_STATE].shape == (2, 2, 32)
        assert td[keys.LANG_TOKENS].shape == (2, 2, 10) and td["action"].shape == (2, 2, 3, 32)
    finally:
        env.close()


def test_tokens_survive_a_collector_reset_on_an_unbatched_env():
    """A torchrl Collector zeroes its buffers in place on reset(); the tokens it held must not be the transform's cache.

    Found on real LIBERO: a one-task run (unbatched LiberoEnv) fed PI0 all-<pad> instructions after the
    first collector.reset(), and the shipped policy's success fell from 0.58 to 0/32.
    """
    from torchrl.collectors import Collector

    tokenizer = make_tokenizer()
    env = TransformedEnv(RawLiberoLikeEnv(chunk=3),
                         Compose(*make_pi0_transforms(make_stats(), image_size=16, tokenizer=tokenizer, tokenizer_max_length=10)))
    expected = PI0TokenizeTransform(tokenizer, max_length=10).tokenize(TASK_TEXT)[0]
    policy = lambda td: td.set("action", env.action_spec.rand())  # noqa: E731
    collector = Collector(env, policy, frames_per_batch=4, total_frames=-1)
    try:
        batches = iter(collector)
        assert (next(batches)[keys.LANG_TOKENS] == expected).all()
        collector.reset()
        assert (next(batches)[keys.LANG_TOKENS] == expected).all()
    finally:
        collector.shutdown()
