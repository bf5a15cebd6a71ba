"""Modes and memory levers as the recipe sets them: updates in train mode, rollouts in eval mode,
policy.gradient_checkpointing reaching lerobot's switch, and the preflight lines for a real run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "recipes"))

import ript_cfg  # noqa: E402

from ript.recipes.training import trainer  # noqa: E402
from ript.recipes.training.config import load_config  # noqa: E402
from ript.recipes.training.factories import make_policy  # noqa: E402


def test_updates_run_in_train_mode_and_rollouts_in_eval_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Even for a policy that starts in eval mode (as lerobot loads PI0): train mode inside update_policy only."""
    seen: dict[str, list[bool]] = {"collect": [], "update": []}
    built = []

    def eval_policy(cfg, device):
        policy = make_policy(cfg, device).eval()
        built.append(policy)
        return policy

    real_collect, real_update = trainer.Trainer.collect, trainer.update_policy

    def collect(self, *args, **kwargs):
        seen["collect"].append(built[0].training)
        return real_collect(self, *args, **kwargs)

    def update(loss_module, *args, **kwargs):
        seen["update"].append(loss_module.policy.training)
        return real_update(loss_module, *args, **kwargs)

    monkeypatch.setattr(trainer, "make_policy", eval_policy)
    monkeypatch.setattr(trainer.Trainer, "collect", collect)
    monkeypatch.setattr(trainer, "update_policy", update)
    ript_cfg.main(["--config-name", "toy", f"logging.output_dir={tmp_path / 'run'}", "train.iterations=2", "eval.every=1000"])
    assert seen["collect"] == [False, False]
    assert seen["update"] and all(seen["update"])
    assert not built[0].training  # the flag comes back after the update


@pytest.mark.parametrize("enabled", [True, False])
def test_gradient_checkpointing_key_reaches_lerobot(enabled: bool) -> None:
    policy = make_policy(load_config("quick_test", [f"policy.gradient_checkpointing={str(enabled).lower()}"]), torch.device("cpu"))
    assert policy.policy.model.gradient_checkpointing_enabled is enabled
    assert policy.policy.config.gradient_checkpointing is enabled


def test_gradient_checkpointing_is_refused_for_the_mlp() -> None:
    from ript.recipes.training.config import ConfigError

    with pytest.raises(ConfigError, match="policy.gradient_checkpointing=true applies to policy.kind=pi0"):
        load_config("toy", ["policy.gradient_checkpointing=true"])


def test_wandb_online_without_credentials_is_one_line_before_any_work(tmp_path: Path) -> None:
    """The issue's command, with a checkpoint path given: wandb's check comes before the checkpoint's and the env's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "NETRC"}
    env["HOME"] = str(tmp_path)  # no ~/.netrc
    out = tmp_path / "run"
    res = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "ript_cfg.py"), "--config-name", "rl_training", "train.device=cpu",
         f"policy.path={tmp_path / 'nowhere'}", f"logging.output_dir={out}"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr[-2000:]
    assert "wandb login" in lines[0] and "WANDB_API_KEY" in lines[0] and "logging.wandb=offline" in lines[0]
    assert not out.exists()
