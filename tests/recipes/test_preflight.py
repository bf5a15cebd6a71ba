"""Preflight checks fail with one line that names the fix."""

import json

import pytest

from ript.recipes.common.preflight import (
    PreflightError,
    check_device,
    check_libero_contexts,
    check_output_dir,
    check_policy_checkpoint,
    check_rendering_backend,
)


def test_output_dir_ok_and_nothing_left_behind(tmp_path):
    out = check_output_dir(tmp_path / "a" / "b")  # checked through its nearest existing parent
    assert out == tmp_path / "a" / "b" and not out.exists() and not any(tmp_path.iterdir())
    (tmp_path / "c").mkdir()
    assert check_output_dir(tmp_path / "c") == tmp_path / "c" and not any((tmp_path / "c").iterdir())


def test_output_dir_is_a_file(tmp_path):
    f = tmp_path / "f"
    f.write_text("keep me")
    with pytest.raises(PreflightError, match="is a file"):
        check_output_dir(f)
    assert f.read_text() == "keep me"


def test_output_dir_not_writable(tmp_path, monkeypatch):
    # CI runs as root, which ignores permission bits: make the write itself fail.
    from pathlib import Path

    def deny(self, data):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "write_bytes", deny)
    with pytest.raises(PreflightError, match="not writable"):
        check_output_dir(tmp_path)


def test_output_dir_not_enough_space(tmp_path):
    with pytest.raises(PreflightError, match="GB free"):
        check_output_dir(tmp_path, min_free_gb=1e9)


@pytest.mark.parametrize(
    "setup, match",
    [
        (lambda d: None, "no config.json"),
        (lambda d: (d / "config.json").write_text("{not json"), "not JSON"),
        (lambda d: (d / "config.json").write_text(json.dumps({"type": "act"})), "not pi0"),
        (lambda d: (d / "config.json").write_text(json.dumps({"type": "pi0"})), "model.safetensors"),
    ],
)
def test_bad_checkpoints(tmp_path, setup, match):
    setup(tmp_path)
    with pytest.raises(PreflightError, match=match) as info:
        check_policy_checkpoint(tmp_path)
    assert "\n" not in str(info.value)


def test_missing_checkpoint_dir(tmp_path):
    with pytest.raises(PreflightError, match="not a directory"):
        check_policy_checkpoint(tmp_path / "nope")


def test_rendering_backend_available():
    check_rendering_backend()


def test_rendering_backend_missing(monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "no-such-backend")
    with pytest.raises(PreflightError, match="setup.sh"):
        check_rendering_backend()


def _resume_dir(tmp_path, overrides):
    import torch

    from ript.recipes.common.config import load_config, to_yaml

    ckpt = tmp_path / "iter_000002"
    (ckpt / "policy").mkdir(parents=True)
    (ckpt / "policy" / "model.safetensors").write_bytes(b"weights")
    (ckpt / "meta.json").write_text("{}")
    torch.save({"iteration": 2}, ckpt / "trainer.pt")
    (ckpt / "config.yaml").write_text(to_yaml(load_config("quick_test", overrides)))
    return ckpt


def test_resume_with_another_frozen_part_names_the_one_it_was_trained_with(tmp_path):
    from ript.recipes.common.preflight import check_resume_checkpoint

    ckpt = _resume_dir(tmp_path, ["policy.freeze=trunk"])
    check_resume_checkpoint(ckpt, freeze="trunk")
    with pytest.raises(PreflightError, match="trained with policy.freeze=trunk; set policy.freeze=trunk"):
        check_resume_checkpoint(ckpt, freeze="none")
    check_resume_checkpoint(_resume_dir(tmp_path / "b", []), freeze="none")  # the default on both sides


def test_libero_contexts_against_the_suites_real_counts():
    from ript.envs.libero_env import suite_sizes

    assert suite_sizes("libero_90") == (50,) * 90 and suite_sizes("libero_goal") == (50,) * 10
    check_libero_contexts("libero_90", [0, 89], {"eval.init_states": [0, 49]})  # the edges are valid
    with pytest.raises(PreflightError, match=r"env.tasks has \[10\] out of range: libero_goal has tasks 0\.\.9"):
        check_libero_contexts("libero_goal", [1, 10], {})
    with pytest.raises(PreflightError, match=r"eval.init_states has \[50, -1\] out of range: libero_10 tasks \[3\] ship init states 0\.\.49"):
        check_libero_contexts("libero_10", [3], {"env.train_init_states": [0], "eval.init_states": [40, 50, -1]})
    with pytest.raises(PreflightError, match="unknown LIBERO suite"):
        check_libero_contexts("libero_100", [0], {})


def test_device_that_is_not_here():
    import torch

    check_device("cpu")
    check_device("auto")
    with pytest.raises(PreflightError, match=r"train.device=cuda:99 but .*(not available|cuda:0\.\.)"):
        check_device("cuda:99")
    if not torch.cuda.is_available():
        with pytest.raises(PreflightError, match="CUDA is not available on this machine: set train.device=cpu"):
            check_device("cuda")
