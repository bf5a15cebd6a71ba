"""recipes/training/cli.py: every tool reads `key=value` over its dataclass, fails in one line, and dry-runs."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ript.recipes.training.cli import field_comments, parse_config, run_cli, to_dotlist
from ript.recipes.training.config import ConfigError


@dataclass
class _Settings:
    """What a tiny tool needs."""

    lr: float = 1e-5  # step size
    positive_only: bool = True
    states: list[int] = field(default_factory=lambda: [0, 1])  # init states
    out: str = "runs/x"
    name: str | None = None


def _validate(cfg: _Settings) -> None:
    if cfg.lr <= 0:
        raise ConfigError(f"lr={cfg.lr} must be > 0")


def _run(argv: list[str], calls: list[_Settings]) -> Any:
    def tool(cfg: _Settings) -> str:
        calls.append(cfg)
        Path(cfg.out).mkdir(parents=True)
        return "ran"

    return run_cli(_Settings, tool, argv, validate=_validate, description="A tiny tool.")


def _one_error_line(capsys: pytest.CaptureFixture[str], argv: list[str], tmp_path: Path) -> str:
    calls: list[_Settings] = []
    with pytest.raises(SystemExit) as info:
        _run([f"out={tmp_path / 'out'}", *argv], calls)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert info.value.code == 2 and len(err) == 1 and err[0].startswith("config error: "), err
    assert not calls and not (tmp_path / "out").exists()
    return err[0]


def test_defaults_lists_and_booleans_are_typed_by_the_schema() -> None:
    assert parse_config(_Settings, []) == _Settings()
    cfg = parse_config(_Settings, ["lr=3e-4", "positive_only=false", "states=[4,5]", "name=null"])
    assert cfg == _Settings(lr=3e-4, positive_only=False, states=[4, 5])
    assert parse_config(_Settings, ["name=a"]).name == "a" and parse_config(_Settings, ["states=[]"]).states == []


@pytest.mark.parametrize("argv, needle", [
    (["lrr=1"], "unknown key 'lrr'"),
    (["lr=fast"], "bad value for 'lr'"),
    (["states=[a]"], "bad value for 'states[0]'"),
    (["positive_only=maybe"], "bad value for 'positive_only'"),
    (["--lr", "1"], "unknown flag '--lr'"),
    (["lr"], "is not key=value"),
    (["lr=-1"], "lr=-1.0 must be > 0"),  # the tool's own validation
], ids=["unknown_key", "bad_float", "bad_list_item", "bad_bool", "old_flag", "no_value", "validation"])
def test_bad_input_is_one_line_and_exit_2(argv: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert needle in _one_error_line(capsys, argv, tmp_path)


def test_dry_run_prints_the_validated_config_and_builds_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[_Settings] = []
    out = tmp_path / "out"
    assert _run([f"out={out}", "states=[7]", "--dry-run"], calls) is None
    printed = capsys.readouterr().out
    assert "states:\n- 7\n" in printed and f"out: {out}" in printed and "lr: 1.0e-05" in printed
    assert not calls and not out.exists()
    assert "lr=-1.0 must be > 0" in _one_error_line(capsys, ["lr=-1", "--dry-run"], tmp_path)  # the dry run validates


def test_a_real_run_calls_the_tool_and_a_config_error_inside_it_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[_Settings] = []
    assert _run([f"out={tmp_path / 'a'}"], calls) == "ran" and calls[0].out == str(tmp_path / "a")

    def tool(cfg: _Settings) -> None:
        raise ConfigError("checkpoint x has no config.json: point checkpoint= at a lerobot checkpoint")

    with pytest.raises(SystemExit) as info:
        run_cli(_Settings, tool, [])
    assert info.value.code == 2 and capsys.readouterr().err.startswith("config error: checkpoint x")


def test_help_lists_every_key_with_its_default_and_comment(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(_Settings, lambda cfg: pytest.fail("ran"), ["-h"], description="A tiny tool.") is None
    text = capsys.readouterr().out
    assert "A tiny tool." in text and "What a tiny tool needs." in text
    assert "lr=1e-05" in text and "step size" in text and "states=[0, 1]" in text and "init states" in text
    assert field_comments(_Settings) == {"lr": "step size", "states": "init states"}


def test_a_config_round_trips_through_its_dotlist() -> None:
    cfg = _Settings(lr=0.5, positive_only=False, states=[3], out="a: b, [c]", name=None)
    assert parse_config(_Settings, to_dotlist(cfg)) == cfg


CONVERTED = ["collect_demos", "bc_pretrain", "buffer_memory", "ddp_scaling", "env_throughput", "iteration_profile",
             "loss_throughput", "nccl_probe", "pi0_full_size", "pi0_step", "render_rate", "sampling_steps", "soak"]


@pytest.mark.parametrize("name", CONVERTED)
def test_every_converted_tool_dry_runs_and_refuses_unknown_keys(name: str, import_benchmark: Any, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    module = importlib.import_module(f"ript.recipes.{name}") if name in ("collect_demos", "bc_pretrain") else import_benchmark(name)
    extra = [f"dataset={tmp_path}"] if name == "bc_pretrain" else []  # its input must exist
    assert module.main([*extra, "--dry-run"]) in (None, 0)
    assert capsys.readouterr().out.strip()
    with pytest.raises(SystemExit) as info:
        module.main([*extra, "no_such_key=1", "--dry-run"])
    assert info.value.code == 2 and "unknown key 'no_such_key'" in capsys.readouterr().err



def test_eval_libero_dry_run_validates_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ript.recipes import eval_libero

    out = tmp_path / "eval"
    result = eval_libero.main(["suite=libero_goal", "tasks=[0]", f"out={out}", "--dry-run"])
    printed = capsys.readouterr().out
    assert result["suites"] == ["libero_goal"] and "fixture_placement: upstream" in printed and "suites=['libero_goal']" in printed
    assert not out.exists()
    with pytest.raises(SystemExit) as info:  # the dry run validates: a task the suite lacks is one line, exit 2
        eval_libero.main(["suite=libero_goal", "tasks=[99]", f"out={out}", "--dry-run"])
    assert info.value.code == 2 and "tasks has [99] out of range" in capsys.readouterr().err
