"""bc_pretrain's argument checks and augmentation (its end-to-end run is in test_collect_demos.py)."""

from __future__ import annotations

import pytest
import torch

from ript.recipes import bc_pretrain
from ript.recipes.common.config import CONFIG_DIR, resolve_repo_path


def test_random_shift_moves_content_and_keeps_dtype():
    gen = torch.Generator().manual_seed(0)
    img = torch.zeros(8, 3, 16, 16, dtype=torch.uint8)
    img[:, :, 8, 8] = 255
    out = bc_pretrain.random_shift(img, 3, gen)
    assert out.dtype == torch.uint8 and out.shape == img.shape
    assert (out.flatten(1).argmax(1) != img.flatten(1).argmax(1)).any()  # some samples moved
    assert torch.equal(bc_pretrain.random_shift(img, 0, gen), img)


def test_overlapping_eval_states_are_rejected(tmp_path):
    with pytest.raises(SystemExit):
        bc_pretrain.parse_args(["--dataset", str(tmp_path), "--demo-init-states", "0", "1", "--eval-init-states", "1"])


def test_decay_longer_than_the_run_is_rejected(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bc_pretrain.parse_args(["--dataset", str(tmp_path), "--steps", "10", "--decay-steps", "11"])
    assert "--decay-steps" in capsys.readouterr().err


def test_missing_dataset_names_the_command_that_writes_it(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bc_pretrain.parse_args(["--dataset", str(tmp_path / "nope")])
    assert "recipes/collect_demos.py" in capsys.readouterr().err


def test_relative_policy_path_resolves_from_repo_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_repo_path("configs") == str(CONFIG_DIR)
    assert resolve_repo_path("no/such/dir") == "no/such/dir"
    assert resolve_repo_path(None) is None


def test_ema_decay_outside_its_range_is_rejected(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bc_pretrain.parse_args(["--dataset", str(tmp_path), "--ema-decay", "1"])
    assert "--ema-decay must be in [0, 1)" in capsys.readouterr().err
