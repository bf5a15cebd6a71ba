"""Config loading and validation: one clear line per mistake, exit code 2, outputs untouched."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ript.recipes.training.config import ConfigError, available_configs, load_config, main_config, parse_args

ROOT = Path(__file__).resolve().parents[2]


def test_every_shipped_config_loads_and_validates() -> None:
    names = available_configs()
    assert {"quick_test", "full_test", "benchmark", "rl_training", "distributed"} <= set(names)
    for name in names:
        needs_path = name in ("rl_training", "distributed")  # real-checkpoint configs refuse the tiny fallback
        cfg = load_config(name, ["policy.path=/ckpt/pi0_libero"] if needs_path else [])
        assert cfg.config_name == name and cfg.policy.path_required == needs_path


@pytest.mark.parametrize("name", ["rl_training", "distributed"])
def test_real_checkpoint_configs_refuse_to_start_without_policy_path(name: str) -> None:
    """One line naming the key and the checkpoint layout, before any work (wandb, env, model)."""
    res = subprocess.run([sys.executable, str(ROOT / "recipes" / "ript_cfg.py"), "--config-name", name, "train.device=cpu"],
                         capture_output=True, text=True, timeout=120)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr[-2000:]
    assert lines[0].startswith("config error: policy.path is not set") and "config.json, model.safetensors" in lines[0]
    assert "wandb" not in lines[0]


def test_dry_run_prints_the_config_and_the_parameter_count_it_builds() -> None:
    """--dry-run counts on the meta device: the same numbers as the policy the run builds, and no env."""
    import torch

    from ript.recipes.training.dry_run import count_parameters
    from ript.recipes.training.factories import make_policy

    for overrides in (["policy.freeze=vision"], ["policy.path=null", "policy.freeze=trunk"]):
        cfg = load_config("quick_test", overrides)
        built = make_policy(cfg, torch.device("cpu"))
        want = (sum(p.numel() for p in built.parameters()), sum(p.numel() for p in built.parameters() if p.requires_grad))
        assert count_parameters(cfg) == want
    res = subprocess.run([sys.executable, str(ROOT / "recipes" / "ript_cfg.py"), "--config-name", "quick_test", "--dry-run"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    total, trainable = count_parameters(load_config("quick_test"))
    assert "policy: PI0 checkpoint" in res.stdout and f"parameters: {total:,} total, {trainable:,} trainable" in res.stdout
    assert "suite: libero_object" in res.stdout  # the resolved YAML


def test_inheritance_and_overrides() -> None:
    cfg = load_config("distributed", ["optim.lr=3e-5", "env.tasks=[2,3]", "amp=off", "policy.path=/ckpt/pi0_libero"])
    assert cfg.distributed.backend == "nccl"  # own key
    assert cfg.algo.group_size == 16  # inherited from rl_training
    assert cfg.optim.lr == pytest.approx(3e-5)
    assert cfg.env.tasks == [2, 3]
    assert cfg.amp == "off"  # YAML's off -> False is mapped back


def test_noise_scale_override_reaches_the_built_policy() -> None:
    import torch

    from ript.recipes.training.factories import make_policy

    assert make_policy(load_config("toy"), torch.device("cpu")).noise_scale == 1.0
    policy = make_policy(load_config("toy", ["policy.noise_scale=1.5"]), torch.device("cpu"))
    assert policy.noise_scale == pytest.approx(1.5)


def test_freeze_reaches_the_loaded_pi0() -> None:
    import torch

    from ript.algos.pi0_actor import PI0Actor
    from ript.recipes.training.config import _CHOICES
    from ript.recipes.training.factories import make_policy

    assert _CHOICES["policy.freeze"] == PI0Actor.FREEZE_PARTS
    policy = make_policy(load_config("quick_test", ["policy.freeze=trunk"]), torch.device("cpu"))
    trunk = policy.policy.model.paligemma_with_expert.paligemma
    assert not any(p.requires_grad for p in trunk.parameters())
    assert all(p.requires_grad for p in policy.policy.model.paligemma_with_expert.gemma_expert.model.parameters())


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["optim.lrr=1"], "unknown key 'optim.lrr'"),
        (["optim.lr=fast"], "optim.lr"),
        (["algo.group_size=1"], "algo.group_size=1 < 2"),
        (["algo.target_steps=-2"], "algo.target_steps=-2 must be >= 0"),
        (["algo.ema_decay=1.0"], "algo.ema_decay=1.0 must be in [0, 1)"),
        (["algo.buffer_iterations=0"], "algo.buffer_iterations=0 must be >= 1"),
        (["policy.n_action_steps=20", "policy.chunk_size=10"], "policy.n_action_steps=20"),
        (["optim.minibatch_size=64"], "optim.minibatch_size=64"),
        (["eval.every=0"], "eval.every=0"),
        (["algo.mode=ppo"], "algo.mode='ppo'"),
        (["eval.init_states=[0]"], "held-out"),
        (["logging.wandb=maybe"], "logging.wandb"),
        (["optim.lr"], "key=value"),
        (["policy.freeze=expert"], "policy.freeze='expert' is not one of"),
        (["policy.kind=mlp", "policy.freeze=trunk"], "applies to policy.kind=pi0 only"),
    ],
)
def test_bad_configs_raise_one_line(overrides: list[str], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config("quick_test", overrides)
    msg = str(info.value)
    assert needle in msg
    assert "\n" not in msg


def test_unknown_config_name_lists_choices() -> None:
    with pytest.raises(ConfigError, match="quick_test"):
        load_config("nope")


def test_parse_args_forms() -> None:
    assert parse_args(["--config-name", "toy", "a.b=1"]) == ("toy", ["a.b=1"], None)
    assert parse_args(["--config-name=toy", "--config-path=/x"]) == ("toy", [], "/x")
    assert parse_args(["-cp", "/y", "-cn", "toy"]) == ("toy", [], "/y")
    for bad in (["--lr", "3"], ["--config-path"]):
        with pytest.raises(ConfigError):
            parse_args(bad)


def test_config_path_reads_a_yaml_elsewhere_with_a_shipped_parent(tmp_path: Path) -> None:
    """A YAML outside configs/ (a tuning study's best.yaml) runs as it is; its `defaults:` parent comes from configs/."""
    (tmp_path / "best.yaml").write_text("defaults: [toy]\noptim:\n  lr: 0.000123\nalgo:\n  mode: cfg\n")
    cfg = main_config(["--config-path", str(tmp_path), "--config-name", "best", "train.iterations=3"])
    assert (cfg.optim.lr, cfg.algo.mode, cfg.train.iterations) == (0.000123, "cfg", 3)
    assert cfg.env.kind == "toy" and cfg.policy.kind == "mlp"  # from configs/toy.yaml
    with pytest.raises(SystemExit) as info:  # a name in neither directory: one line, exit 2
        main_config(["--config-path", str(tmp_path), "--config-name", "nope"])
    assert info.value.code == 2


def test_main_config_exits_2_without_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main_config(["algo.group_size=1"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("config error:")
    with pytest.raises(ConfigError):  # debug=true keeps the exception
        main_config(["algo.group_size=1", "debug=true"])


@pytest.mark.parametrize(
    "args",
    [
        ["--config-name", "toy", "algo.group_size=1"],
        ["--config-name", "toy", "optim.minibatch_size=99"],
        ["--config-name", "toy", "nonsense.key=3"],
        ["--config-name", "toy", "eval.every=-1"],
    ],
)
def test_cli_rejects_bad_config_and_leaves_outputs_untouched(tmp_path: Path, args: list[str]) -> None:
    out = tmp_path / "run"
    out.mkdir()
    sentinel = out / "metrics.csv"
    sentinel.write_text("iteration\n1\n")
    before = sorted(p.name for p in out.iterdir())
    res = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "ript_cfg.py"), *args, f"logging.output_dir={out}"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert res.returncode == 2, res.stderr
    lines = [l for l in res.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("config error:"), res.stderr
    assert "Traceback" not in res.stderr
    assert sorted(p.name for p in out.iterdir()) == before
    assert sentinel.read_text() == "iteration\n1\n"


@pytest.mark.parametrize("suite,length", [("libero_spatial", 220), ("libero_object", 280), ("libero_goal", 300), ("libero_10", 520), ("libero_90", 400)])
def test_unset_max_steps_gives_the_suites_decision_steps(suite: str, length: int) -> None:
    """env.max_steps null: openpi's per-suite episode length, in chunks of n_action_steps (rounded up)."""
    from ript.recipes.training.factories import max_decision_steps

    cfg = load_config("quick_test", [f"env.suite={suite}", "env.max_steps=null", "policy.n_action_steps=7"])
    assert cfg.env.max_steps is None
    assert max_decision_steps(cfg) == -(-length // 7)
    assert max_decision_steps(load_config("quick_test", [f"env.suite={suite}", "env.max_steps=70", "policy.n_action_steps=7"])) == 10
