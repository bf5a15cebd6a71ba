"""Preflight checks fail with one line that names the fix."""

import json

import pytest

from ript.recipes.training.preflight import (
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

    from ript.recipes.training.config import load_config, to_yaml

    ckpt = tmp_path / "iter_000002"
    (ckpt / "policy").mkdir(parents=True)
    (ckpt / "policy" / "model.safetensors").write_bytes(b"weights")
    (ckpt / "meta.json").write_text("{}")
    torch.save({"iteration": 2}, ckpt / "trainer.pt")
    (ckpt / "config.yaml").write_text(to_yaml(load_config("quick_test", overrides)))
    return ckpt


def test_resume_with_another_frozen_part_names_the_one_it_was_trained_with(tmp_path):
    from ript.recipes.training.preflight import check_resume_checkpoint

    ckpt = _resume_dir(tmp_path, ["policy.freeze=trunk"])
    check_resume_checkpoint(ckpt, freeze="trunk")
    with pytest.raises(PreflightError, match="trained with policy.freeze=trunk; set policy.freeze=trunk"):
        check_resume_checkpoint(ckpt, freeze="none")
    check_resume_checkpoint(_resume_dir(tmp_path / "b", []), freeze="none")  # the default on both sides


def _real_layout_checkpoint(d, embed_rows: int = 300):
    """A checkpoint without tiny_pi0.json (so: a real PI0 for the tokenizer check), whose header says `embed_rows` tokens."""
    import torch
    from safetensors.torch import save_file

    d.mkdir()
    (d / "config.json").write_text(json.dumps({"type": "pi0"}))
    save_file({"model.paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight": torch.zeros(embed_rows, 2)},
              str(d / "model.safetensors"))
    return d


def test_tokenizer_of_a_real_checkpoint_is_checked_before_any_worker(tmp_path):
    from ript.algos import build_libero_tokenizer
    from ript.recipes.training.preflight import check_tokenizer

    ckpt = _real_layout_checkpoint(tmp_path / "ckpt")
    with pytest.raises(PreflightError, match="ships no tokenizer/ and policy.tokenizer_path is null") as info:
        check_tokenizer(ckpt, None)
    assert "\n" not in str(info.value)
    build_libero_tokenizer().save_pretrained(str(tmp_path / "tok"))
    check_tokenizer(ckpt, tmp_path / "tok")  # a local path
    build_libero_tokenizer().save_pretrained(str(ckpt / "tokenizer"))
    check_tokenizer(ckpt, None)  # shipped in the checkpoint
    (tmp_path / "empty").mkdir()
    with pytest.raises(PreflightError, match="holds no tokenizer.json"):
        check_tokenizer(ckpt, tmp_path / "empty")
    small = _real_layout_checkpoint(tmp_path / "small", embed_rows=10)
    with pytest.raises(PreflightError, match="embeds only 10"):
        check_tokenizer(small, tmp_path / "tok")
    check_tokenizer(None, None)  # a fresh tiny PI0 builds its own


def test_shipped_tiny_checkpoint_passes_the_tokenizer_check():
    from ript.recipes.training.config import load_config
    from ript.recipes.training.preflight import check_tokenizer

    cfg = load_config("quick_test")
    check_tokenizer(cfg.policy.path, None)


def test_wandb_online_needs_credentials(tmp_path, monkeypatch):
    from ript.recipes.training.preflight import check_wandb_credentials

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    check_wandb_credentials("offline")
    check_wandb_credentials("disabled")
    with pytest.raises(PreflightError, match="wandb login") as info:
        check_wandb_credentials("online")
    assert "logging.wandb=offline" in str(info.value) and "WANDB_API_KEY" in str(info.value)
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password abc123\n")
    check_wandb_credentials("online")
    (tmp_path / "netrc").unlink()
    monkeypatch.setenv("WANDB_API_KEY", "abc123")
    check_wandb_credentials("online")


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
