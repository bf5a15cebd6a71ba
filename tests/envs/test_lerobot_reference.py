"""Our PI0 transforms against lerobot's own LIBERO + PI0 pipeline on the same simulator frame.

Reference = lerobot.envs.libero.LiberoEnv -> preprocess_observation -> the LIBERO
env processor (LiberoProcessorStep: rotate 180, quat -> axis-angle) -> PI0's
preprocessor from make_pi0_pre_post_processors (newline, tokenizer, normaliser)
-> PI0's own resize_with_pad_torch and pad_vector; actions through PI0's
postprocessor. Offline: lerobot's tokenizer loader is pointed at a local tokenizer.
Cameras are rendered non-square so that padding is compared too.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tensordict import TensorDict

import ript.envs  # noqa: F401  (sets MUJOCO_GL before mujoco loads)
from ript.envs import keys
from ript.envs.normalization import NormStats
from ript.envs.transforms import PI0ActionTransform, make_pi0_transforms

H, W = 96, 128  # non-square: PI0's resize pads rows


def _stats() -> dict[str, dict[str, torch.Tensor]]:
    """Plausible LIBERO-scale statistics (state: pos ~0.1 m, axis-angle ~3 rad, gripper ~0.04 m)."""
    g = torch.Generator().manual_seed(0)
    state_mean = torch.tensor([-0.05, 0.03, 0.8, 2.9, -0.1, 0.0, 0.03, -0.03])
    state_std = torch.tensor([0.1, 0.15, 0.1, 0.4, 0.6, 0.3, 0.01, 0.01])
    action_mean = torch.randn(7, generator=g) * 0.05
    action_std = torch.rand(7, generator=g) * 0.3 + 0.1
    return {
        "observation.state": {"mean": state_mean, "std": state_std, "q01": state_mean - 2.5 * state_std, "q99": state_mean + 2.5 * state_std},
        "action": {"mean": action_mean, "std": action_std, "q01": action_mean - 2 * action_std, "q99": action_mean + 2 * action_std},
    }


STEP_ACTION = np.array([0.3, -0.2, 0.1, 0.05, 0.0, -0.1, -1.0], dtype=np.float32)


@pytest.fixture(scope="module")
def lerobot_frames():
    """Raw observations from lerobot's LIBERO env (init state 0): after reset (10 settle steps), after one step."""
    from lerobot.envs.libero import LiberoEnv, _get_suite

    suite = _get_suite("libero_object")
    env = LiberoEnv(suite, task_id=1, task_suite_name="libero_object", obs_type="pixels_agent_pos",
                    observation_height=H, observation_width=W)
    try:
        obs_reset, _ = env.reset(seed=0)
        obs_step, *_ = env.step(STEP_ACTION)
        yield obs_reset, obs_step, env.task_description
    finally:
        env.close()


def _reference(obs: dict, task: str, stats: dict, tokenizer, monkeypatch, norm_mode: str):
    from lerobot.configs import FeatureType, NormalizationMode, PolicyFeature
    from lerobot.envs.configs import LiberoEnv as LiberoEnvConfig
    from lerobot.envs.utils import preprocess_observation
    from lerobot.policies.common.vla_utils import pad_vector, resize_with_pad_torch
    from lerobot.policies.pi0.configuration_pi0 import PI0Config
    from lerobot.policies.pi0.processor_pi0 import make_pi0_pre_post_processors
    from lerobot.processor import tokenizer_processor

    class _LocalTokenizer:  # lerobot asks the hub for PaliGemma's tokenizer: answer with the local one
        @staticmethod
        def from_pretrained(*args, **kwargs):
            return tokenizer

    monkeypatch.setattr(tokenizer_processor, "AutoTokenizer", _LocalTokenizer)
    mode = NormalizationMode(norm_mode)
    config = PI0Config(
        device="cpu",
        input_features={
            "observation.images.image": PolicyFeature(type=FeatureType.VISUAL, shape=(3, H, W)),
            "observation.images.image2": PolicyFeature(type=FeatureType.VISUAL, shape=(3, H, W)),
            "observation.state": PolicyFeature(type=FeatureType.STATE, shape=(8,)),
        },
        output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(7,))},
        normalization_mapping={"VISUAL": NormalizationMode.IDENTITY, "STATE": mode, "ACTION": mode},
    )
    pre, post = make_pi0_pre_post_processors(config, dataset_stats=stats)
    env_pre, _ = LiberoEnvConfig(task="libero_object").get_env_processors()

    def batched(x):  # lerobot's eval runs vector envs: every leaf has a leading env dim
        return {k: batched(v) for k, v in x.items()} if isinstance(x, dict) else np.asarray(x)[None]

    batch = preprocess_observation(batched(obs))
    batch["task"] = [task]
    batch = pre(env_pre(batch))
    out = {"state": pad_vector(batch["observation.state"], config.max_state_dim)[0],
           "tokens": batch["observation.language.tokens"][0], "mask": batch["observation.language.attention_mask"][0]}
    for name, key in (("image", "observation.images.image"), ("wrist_image", "observation.images.image2")):
        img = resize_with_pad_torch(batch[key].permute(0, 2, 3, 1), *config.image_resolution)  # as PI0._preprocess_images
        out[name] = img.permute(0, 3, 1, 2)[0] * 255.0
    return out, pre, post, config


def _ours_raw_td(obs: dict, task: str) -> TensorDict:
    """The frame as ript's raw LiberoEnv stores it: CHW uint8 in simulator orientation, float32 state."""
    rs = obs["robot_state"]
    return TensorDict(
        {
            keys.AGENTVIEW_IMAGE: torch.from_numpy(np.ascontiguousarray(obs["pixels"]["image"].transpose(2, 0, 1))),
            keys.EYE_IN_HAND_IMAGE: torch.from_numpy(np.ascontiguousarray(obs["pixels"]["image2"].transpose(2, 0, 1))),
            keys.EEF_POS: torch.as_tensor(rs["eef"]["pos"], dtype=torch.float32),
            keys.EEF_QUAT: torch.as_tensor(rs["eef"]["quat"], dtype=torch.float32),
            keys.GRIPPER_QPOS: torch.as_tensor(rs["gripper"]["qpos"], dtype=torch.float32),
            keys.TASK: task,
        },
        [],
    )


@pytest.mark.slow
@pytest.mark.parametrize("norm_mode", ["MEAN_STD", "QUANTILES"])
def test_matches_lerobot_libero_pi0_pipeline(lerobot_frames, monkeypatch, tmp_path, norm_mode):
    from ript.algos.tokenizer import build_libero_tokenizer

    _, obs, task = lerobot_frames
    tokenizer = build_libero_tokenizer([task])
    stats = _stats()
    ref, pre, post, config = _reference(obs, task, stats, tokenizer, monkeypatch, norm_mode)

    # Statistics read back from the checkpoint format lerobot saves.
    post.save_pretrained(tmp_path)
    pre.save_pretrained(tmp_path)
    norm_stats = NormStats.from_lerobot_checkpoint(tmp_path)

    td = _ours_raw_td(obs, task)
    for t in make_pi0_transforms(norm_stats, tokenizer=tokenizer, tokenizer_max_length=config.tokenizer_max_length):
        td = t(td)

    assert torch.allclose(td[keys.PI0_STATE], ref["state"], atol=1e-5), (td[keys.PI0_STATE][:8], ref["state"][:8])
    for ours_key, name in ((keys.PI0_IMAGE, "image"), (keys.PI0_WRIST_IMAGE, "wrist_image")):
        ours = td[ours_key]
        assert ours.dtype == torch.uint8 and ours.shape == ref[name].shape == (3, 224, 224)
        assert (ours.float() - ref[name]).abs().max() <= 1.0
        assert (ours[:, :28] == 0).all() and ours[:, 28:196].float().mean() > 10  # black rows, then the picture
    assert torch.equal(td[keys.LANG_TOKENS], ref["tokens"]) and torch.equal(td[keys.LANG_MASK], ref["mask"])

    # Actions: our inverse transform equals lerobot's postprocessor (values inside [-1, 1] so clipping is moot).
    norm_action = torch.randn(5, 7, generator=torch.Generator().manual_seed(1)) * 0.5
    ref_action = post(norm_action)
    inside = ref_action.abs().le(1.0).all(-1)
    padded = torch.nn.functional.pad(norm_action, (0, 25))
    ours_action = PI0ActionTransform(norm_stats).inv(TensorDict({"action": padded}, []))["action"]
    assert inside.any()
    assert torch.allclose(ours_action[inside], ref_action[inside], atol=1e-5)
    assert torch.equal(ours_action, ref_action.clamp(-1, 1)) or torch.allclose(ours_action, ref_action.clamp(-1, 1), atol=1e-5)



@pytest.mark.slow
def test_ript_libero_env_with_transforms_matches_lerobot(lerobot_frames, monkeypatch, tmp_path):
    """ript's LiberoEnv + make_pi0_transforms, end to end, equals lerobot's env + PI0 pipeline (reset and one step)."""
    from torchrl.envs.utils import check_env_specs

    from ript.algos.tokenizer import build_libero_tokenizer
    from ript.envs import make_libero_env

    obs_reset, obs_step, task = lerobot_frames
    tokenizer = build_libero_tokenizer([task])
    stats = _stats()
    refs = [_reference(o, task, stats, tokenizer, monkeypatch, "MEAN_STD") for o in (obs_reset, obs_step)]
    pre, post = refs[0][1], refs[0][2]
    pre.save_pretrained(tmp_path)
    post.save_pretrained(tmp_path)
    norm_stats = NormStats.from_lerobot_checkpoint(tmp_path)

    env = make_libero_env("libero_object", 1, camera_size=(H, W), init_state_mode="fixed", init_state_id=0,
                          transforms=make_pi0_transforms(norm_stats, tokenizer=tokenizer))
    try:
        assert env.action_spec.shape == (32,) and env.base_env.action_spec.shape == (7,)
        td = env.reset()
        action = torch.nn.functional.pad(norm_stats.normalize_action(torch.from_numpy(STEP_ACTION)), (0, 25))
        td.set("action", action)
        td_next = env.step(td)["next"]
        for ours, (ref, *_rest) in zip((td, td_next), refs):
            assert torch.allclose(ours[keys.PI0_STATE], ref["state"], atol=1e-5)
            assert (ours[keys.PI0_IMAGE].float() - ref["image"]).abs().max() <= 1.0
            assert (ours[keys.PI0_WRIST_IMAGE].float() - ref["wrist_image"]).abs().max() <= 1.0
            assert torch.equal(ours[keys.LANG_TOKENS], ref["tokens"])
        check_env_specs(env, seed=0)
    finally:
        env.close()
