"""Scripted demos -> LeRobotDataset -> behaviour cloning: the data round-trips and BC learns from it.

One real expert episode (libero_object task 1, init state 0, 32 px cameras) is written by
recipes/collect_demos.py with lerobot's own writer and read back with lerobot's own loader.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import ript.envs  # noqa: F401  (sets MUJOCO_GL before mujoco loads)
from ript.recipes import bc_pretrain, collect_demos

K_CHUNK = "action_chunk"
ROOT = Path(__file__).resolve().parents[2]
TINY = ["width=32", "depth=1", "vision_width=32", "vision_layers=1", "patch_size=8", "threads=1"]


def test_task_specs_parse_or_name_the_format():
    assert collect_demos.parse_task("libero_goal:8") == ("libero_goal", 8)
    for bad in ("libero_goal", "libero_goal:x", ":3"):
        with pytest.raises(ValueError, match="suite:task_id"):
            collect_demos.parse_task(bad)
    with pytest.raises(SystemExit):
        collect_demos.parse_args(["tasks=[libero_object]"])


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demos") / "scripted"
    cfg = collect_demos.DemoConfig(out=str(out), tasks=["libero_object:1"], init_states=[0], camera_size=32,
                                   image_size=32, workers=1)
    summary = collect_demos.collect(cfg, log=lambda msg: None)
    assert summary["libero_object:1"]["successes"] == 1
    return out


@pytest.mark.slow
def test_demo_episode_round_trips_through_lerobot_dataset(demo_dir):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from ript.envs import NormStats, make_libero_env
    from ript.envs import keys as K
    from ript.envs.scripted_expert import make_expert
    from ript.envs.transforms import PI0ImageTransform, PI0StateTransform

    episodes = json.loads((demo_dir / collect_demos.EPISODES_FILE).read_text())
    assert [(e["task"], e["init_state_id"]) for e in episodes] == [("libero_object:1", 0)]
    ds = LeRobotDataset("ript/scripted_libero", root=demo_dir)
    assert ds.meta.total_episodes == 1 and len(ds) == episodes[0]["length"] and 80 < len(ds) < 200
    first = ds[0]
    assert first["task"] == "pick up the cream cheese and place it in the basket"

    # frame 0 is exactly what the PI0 transforms make of the env's first observation, and
    # the first actions are the expert's first chunk from the same state
    env = make_libero_env("libero_object", 1, action_chunk=1, camera_size=32, init_state_mode="fixed", seed=0)
    try:
        td = env.reset()
        seen = PI0ImageTransform(image_size=32)(td.select(K.OBS).clone())
        stored = (first[collect_demos.IMAGE_KEY] * 255).round().to(torch.uint8)
        assert torch.equal(stored, seen.get(K.PI0_IMAGE))
        assert torch.equal((first[collect_demos.WRIST_KEY] * 255).round().to(torch.uint8), seen.get(K.PI0_WRIST_IMAGE))
        raw = PI0StateTransform(NormStats.identity()).raw_state(td.get(K.EEF_POS), td.get(K.EEF_QUAT), td.get(K.GRIPPER_QPOS))
        torch.testing.assert_close(first[collect_demos.STATE_KEY], raw)
        plan = make_expert(env.sim.robosuite_env).act(5)
        stored_actions = torch.stack([ds[i][collect_demos.ACTION_KEY] for i in range(5)])
        torch.testing.assert_close(stored_actions, torch.as_tensor(plan, dtype=torch.float32))
    finally:
        env.close()
    # the last action closes the episode: gripper opened over the basket
    assert ds[len(ds) - 1][collect_demos.ACTION_KEY][6] == -1.0


@pytest.mark.slow
def test_bc_lowers_the_loss_on_a_demo_batch(demo_dir):
    cfg = bc_pretrain.parse_args([f"dataset={demo_dir}", "demo_init_states=[0]", "eval_init_states=[45]", *TINY])
    actor = bc_pretrain.make_actor(cfg, image_size=32)
    data, norm, info = bc_pretrain.load_demos(cfg, actor)
    assert info["demos"] == 1 and len(data) == info["frames"]
    # chunks and their padding mask are what lerobot's own delta_timestamps query returns
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("ript/scripted_libero", root=demo_dir, delta_timestamps={"action": [i / 20 for i in range(10)]})
    for i in (0, len(ds) // 2, len(ds) - 4, len(ds) - 1):
        item = ds[i]
        assert torch.equal(data["action_mask"][i], ~item["action_is_pad"])
        torch.testing.assert_close(data[K_CHUNK][i, :, :7], norm.normalize_action(item["action"]))
        assert torch.equal(data["observation", "image"][i], (item[collect_demos.IMAGE_KEY] * 255).round().to(torch.uint8))
    assert not data["action_mask"][-1, 1:].any() and data["action_mask"][0].all()
    assert abs(float(data[K_CHUNK][:, :, :7][data["action_mask"]].mean())) < 0.2
    batch = data[torch.arange(0, len(data), max(1, len(data) // 16))]
    noise = torch.randn(len(batch), 10, 32, generator=torch.Generator().manual_seed(0))
    time = torch.full((len(batch),), 0.5)
    before = actor.per_sample_loss(batch, noise=noise, time=time).mean().item()
    opt = torch.optim.AdamW([p for p in actor.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(5):
        loss = actor.per_sample_loss(batch).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = actor.per_sample_loss(batch, noise=noise, time=time).mean().item()
    assert after < 0.9 * before, (before, after)



@pytest.fixture(scope="module")
def bc_run(demo_dir, tmp_path_factory):
    """A 2-step BC checkpoint of the one demo (EMA weights saved), and bc_pretrain's result."""
    out = tmp_path_factory.mktemp("bc") / "ckpt"
    result = bc_pretrain.main([f"dataset={demo_dir}", f"out={out}", "demo_init_states=[0]", "eval_init_states=[45]",
                               "steps=2", "batch_size=4", "eval_every=0", "save_every=1",
                               "ema_decay=0.99", *TINY])  # the averaged weights are what is evaluated and saved
    return out, result


@pytest.mark.slow
def test_bc_run_saves_a_checkpoint_the_recipe_loads(bc_run):
    from ript.envs import NormStats
    from ript.recipes.training.config import ConfigError, load_config
    from ript.recipes.training.factories import make_policy

    out, result = bc_run
    assert result["demos"] == 1 and len(result["curve"]) == 1
    # save_every keeps an unevaluated snapshot per N steps beside the final checkpoint
    snapshot = json.loads((out.parent / "ckpt_step1" / "bc_config.json").read_text())
    assert snapshot["saved_at_step"] == 1 and snapshot["curve"] == [] and (out.parent / "ckpt_step1" / "model.safetensors").is_file()
    assert 0.0 <= result["curve"][0]["success"]["libero_object:1"] <= 1.0
    saved = json.loads((out / "bc_config.json").read_text())
    assert saved["tasks"] == ["libero_object:1"] and saved["camera_size"] == 32 and saved["curve"] == result["curve"]
    assert saved["cloned_init_states"] == {"libero_object:1": [0]}  # what learning_libero's replay may draw

    with pytest.raises(ConfigError, match="set env.camera_size=32"):
        make_policy(load_config("quick_test", [f"policy.path={os.path.relpath(out)}", "env.camera_size=64"]), torch.device("cpu"))
    cfg = load_config("quick_test", [f"policy.path={os.path.relpath(out)}", "env.camera_size=32", "policy.num_inference_steps=2"])
    policy = make_policy(cfg, torch.device("cpu"))
    assert policy.policy.config.image_resolution == (32, 32) and policy.chunk_size == 10
    norm = NormStats.from_lerobot_checkpoint(out)
    # the demo's statistics, not identity: its gripper actions are +-1, its state sits far from 0
    assert 0.5 < float(norm.action_std[6]) < 1.5 and not torch.allclose(norm.state_mean, torch.zeros(8))
    assert np.isfinite(norm.state_std.numpy()).all()


@pytest.mark.slow
def test_replayed_demos_are_decision_steps_the_rl_update_trains_on(demo_dir, bc_run, tmp_path):
    """algo.demo_replay: expert steps shaped like kept rollout steps (advantage +1), every replanning step, in the recipe's update."""
    import csv
    import sys

    from ript.algos import RIPTCFGLoss
    from ript.envs import NormStats
    from ript.recipes.training.config import ConfigError, load_config
    from ript.recipes.training.demo_replay import DemoReplay, plan_demo_replay
    from ript.recipes.training.factories import make_policy, stored_keys

    out, _ = bc_run
    base = [f"policy.path={out}", "env.camera_size=32", "env.tasks=[libero_object:1]", f"algo.demo_dataset={demo_dir}",
            "algo.demo_replay=1", "env.train_init_states=[0,1,2]"]
    cfg = load_config("quick_test", base)
    actor, norm = make_policy(cfg, torch.device("cpu")), NormStats.from_lerobot_checkpoint(out)
    replay = DemoReplay(cfg, actor, norm)
    assert replay.plan.init_states == [0] and replay.plan.cloned == {"libero_object:1": [0]}  # what it was cloned on only
    steps = replay.draw(0)
    bc_cfg = bc_pretrain.parse_args([f"dataset={demo_dir}", "demo_init_states=[0]", "eval_init_states=[45]", *TINY])
    frames, _, info = bc_pretrain.load_demos(bc_cfg, actor, norm=norm)
    assert steps.shape[0] == -(-info["frames"] // 5)
    assert torch.equal(steps[K_CHUNK], frames[K_CHUNK][::5]) and torch.equal(steps["action_mask"], frames["action_mask"][::5])
    assert (steps["advantage"] == 1).all() and steps["informative"].all()
    assert torch.equal(replay.draw(0)[K_CHUNK], steps[K_CHUNK])  # a pure function of (seed, iteration): a resume draws the same
    loss = RIPTCFGLoss(actor, positive_only=True)(steps.select(*stored_keys(actor, steps)))
    assert torch.isfinite(loss["loss_ript_cfg"]) and loss["loss_ript_cfg"] > 0 and loss["frac_positive"] == 1
    # the policy's own normalisation shapes the targets, not the dataset's
    other = NormStats(state_mean=norm.state_mean + 0.1, state_std=norm.state_std * 1.5,
                      action_mean=norm.action_mean + 0.2, action_std=norm.action_std * 2.0)
    theirs = DemoReplay(cfg, actor, other).draw(0)
    raw = norm.unnormalize_action(steps[K_CHUNK][..., :7])
    assert torch.allclose(other.unnormalize_action(theirs[K_CHUNK][..., :7]), raw, atol=1e-5)
    assert not torch.allclose(theirs[K_CHUNK], steps[K_CHUNK], atol=1e-2)
    with pytest.raises(ConfigError, match="holds no demo of a training init state the checkpoint was cloned on"):
        plan_demo_replay(load_config("quick_test", [*base[:-1], "env.train_init_states=[5]"]))
    with pytest.raises(ConfigError, match="no LeRobotDataset at"):
        plan_demo_replay(load_config("quick_test", [*base, f"algo.demo_dataset={demo_dir.parent / 'none'}"]))
    # the recipe trains on them beside its own groups
    sys.path.insert(0, str(ROOT / "recipes"))
    import ript_cfg

    summary = ript_cfg.main(["--config-name", "quick_test", *base, "env.max_steps=20", "train.iterations=1", "eval.episodes=1",
                             "algo.group_size=2", "algo.target_groups=1", "algo.max_context_draws=2", "optim.minibatch_size=2",
                             "logging.video_every=0", "logging.progress=false", f"logging.output_dir={tmp_path / 'run'}"])
    row = next(csv.DictReader(open(summary["metrics_csv"])))
    assert int(row["data/demo_steps"]) == steps.shape[0] and int(row["data/trained_steps"]) >= steps.shape[0]
    assert int(row["optim/steps"]) > 0
