"""bc_pretrain: a tiny end-to-end run (expert demo -> BC steps -> eval -> save) loads back through the recipe's factories."""

from __future__ import annotations

import json
import os

import pytest
import torch

import ript.envs  # noqa: F401  (sets MUJOCO_GL before mujoco loads)
from ript.recipes import bc_pretrain
from ript.recipes.common.config import CONFIG_DIR, load_config, resolve_repo_path
from ript.recipes.common.factories import make_policy


def test_random_shift_moves_content_and_keeps_dtype():
    gen = torch.Generator().manual_seed(0)
    img = torch.zeros(8, 3, 16, 16, dtype=torch.uint8)
    img[:, :, 8, 8] = 255
    out = bc_pretrain.random_shift(img, 3, gen)
    assert out.dtype == torch.uint8 and out.shape == img.shape
    assert (out.flatten(1).argmax(1) != img.flatten(1).argmax(1)).any()  # some samples moved
    assert torch.equal(bc_pretrain.random_shift(img, 0, gen), img)


def test_overlapping_eval_states_are_rejected():
    with pytest.raises(SystemExit):
        bc_pretrain.parse_args(["--demo-init-states", "0", "1", "--eval-init-states", "1"])


def test_relative_policy_path_resolves_from_repo_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_repo_path("configs") == str(CONFIG_DIR)
    assert resolve_repo_path("no/such/dir") == "no/such/dir"
    assert resolve_repo_path(None) is None


@pytest.mark.slow
def test_tiny_bc_run_saves_a_checkpoint_the_recipe_loads(tmp_path):
    out = tmp_path / "ckpt"
    result = bc_pretrain.main([
        "--out", str(out), "--demo-init-states", "0", "--eval-init-states", "45", "--max-steps", "130",
        "--camera-size", "32", "--image-size", "32", "--patch-size", "8", "--width", "32", "--depth", "1",
        "--vision-width", "32", "--vision-layers", "1", "--steps", "2", "--batch-size", "4", "--eval-every", "0",
        "--threads", "1",
    ])
    assert result["demos"] == 1 and len(result["curve"]) == 1 and 0.0 <= result["curve"][0]["success_rate"] <= 1.0
    saved = json.loads((out / "bc_config.json").read_text())
    assert saved["config"]["demo_init_states"] == [0] and saved["curve"] == result["curve"]

    cfg = load_config("quick_test", [f"policy.path={os.path.relpath(out)}", "env.camera_size=32", "policy.num_inference_steps=2"])
    policy = make_policy(cfg, torch.device("cpu"))
    assert policy.policy.config.image_resolution == (32, 32) and policy.chunk_size == 10
    stats = policy.dataset_stats
    assert stats is not None and stats["action"]["std"].shape == (7,)
    # gripper actions of the demo are +-1: the saved statistics are the demo's, not identity
    assert 0.5 < stats["action"]["std"][6] < 1.5 and not torch.allclose(stats["observation.state"]["mean"], torch.zeros(8))
    from ript.envs import NormStats

    norm = NormStats.from_lerobot_checkpoint(out)
    assert torch.allclose(norm.action_std, stats["action"]["std"])
