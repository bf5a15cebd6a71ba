"""bc_pretrain's argument checks and augmentation (its end-to-end run is in test_collect_demos.py)."""

from __future__ import annotations

import pytest
import torch

from ript.recipes import bc_pretrain
from ript.recipes.training.config import CONFIG_DIR, resolve_repo_path


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
        bc_pretrain.parse_args([f"dataset={tmp_path}", "demo_init_states=[0,1]", "eval_init_states=[1]"])


def test_decay_longer_than_the_run_is_rejected(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bc_pretrain.parse_args([f"dataset={tmp_path}", "steps=10", "decay_steps=11"])
    assert "decay_steps" in capsys.readouterr().err


def test_missing_dataset_names_the_command_that_writes_it(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bc_pretrain.parse_args([f"dataset={tmp_path / 'nope'}"])
    assert "recipes/collect_demos.py" in capsys.readouterr().err


def test_relative_policy_path_resolves_from_repo_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_repo_path("configs") == str(CONFIG_DIR)
    assert resolve_repo_path("no/such/dir") == "no/such/dir"
    assert resolve_repo_path(None) is None


def test_ema_decay_outside_its_range_is_rejected(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bc_pretrain.parse_args([f"dataset={tmp_path}", "ema_decay=1"])
    assert "ema_decay must be in [0, 1)" in capsys.readouterr().err


def _episodes() -> list[dict]:
    """Three tasks' demos on init states 0..5, written in collection order (tasks interleaved, one state missing)."""
    eps = [(t, s) for s in range(6) for t in ("libero_object:1", "libero_spatial:2", "libero_goal:8") if (t, s) != ("libero_goal:8", 1)]
    eps.reverse()  # collection order need not be init-state order
    return [{"episode_index": i, "task": t, "init_state_id": s} for i, (t, s) in enumerate(eps)]


def test_per_task_caps_take_each_tasks_first_demos_and_record_them():
    cfg = bc_pretrain.BCConfig(demo_init_states=[0, 1, 2, 3, 4], max_demos_per_task=3,
                               task_max_demos=["libero_goal:8=2", "libero_object:1=4"])
    chosen, cloned = bc_pretrain.choose_demos(_episodes(), cfg)
    assert cloned == {"libero_object:1": [0, 1, 2, 3], "libero_spatial:2": [0, 1, 2], "libero_goal:8": [0, 2]}
    by_index = {e["episode_index"]: (e["task"], e["init_state_id"]) for e in _episodes()}
    assert sorted(by_index[i] for i in chosen) == sorted((t, s) for t, states in cloned.items() for s in states)
    # no cap: every demo on the wanted states, as before per-task caps existed
    _, every = bc_pretrain.choose_demos(_episodes(), bc_pretrain.BCConfig(demo_init_states=[0, 1, 2, 3, 4]))
    assert every["libero_goal:8"] == [0, 2, 3, 4] and every["libero_spatial:2"] == [0, 1, 2, 3, 4]


def test_replay_keeps_each_task_to_the_states_it_was_cloned_on():
    cfg = bc_pretrain.BCConfig(demo_init_states=[1, 2, 3])
    _, cloned = bc_pretrain.choose_demos(_episodes(), cfg, allowed={"libero_object:1": [0, 1, 2, 3], "libero_goal:8": [0, 2]})
    assert cloned == {"libero_object:1": [1, 2, 3], "libero_goal:8": [2]}  # spatial: not allowed at all


def test_bad_per_task_caps_name_the_format(tmp_path, capsys):
    for bad in ("libero_goal:8", "libero_goal:8=0", "=3", "libero_goal:8=x"):
        with pytest.raises(SystemExit):
            bc_pretrain.parse_args([f"dataset={tmp_path}", f"task_max_demos=[{bad}]"])
        assert "write TASK=N with N >= 1" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not among"):
        bc_pretrain.choose_demos(_episodes(), bc_pretrain.BCConfig(task_max_demos=["libero_goal:3=2"]))
