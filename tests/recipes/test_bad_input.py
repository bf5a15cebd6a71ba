"""Bad-input sweep through the real CLI: malformed configs, run directories, PI0 checkpoints and
normalisation statistics each end with exit code 2 and ONE stderr line naming the fix, before any
heavy work, and never touch an existing run's files."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "recipes"))

import ript_cfg  # noqa: E402

TOY = ["--config-name", "toy"]
LIBERO = ["--config-name", "quick_test", "env.kind=libero"]


def tree_hash(root: Path) -> str:
    """Names and contents of every file under root (what 'left untouched' means)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _pi0_checkpoint(d: Path, *, config: object = None, weights: bytes = b"\0" * 16, stats: dict | None = None, pre: object = "ok") -> Path:
    """A minimal lerobot-layout PI0 checkpoint dir; each argument can be made wrong."""
    d.mkdir(parents=True)
    cfg = {"type": "pi0", "input_features": {"observation.state": {"type": "STATE", "shape": [8]}},
           "output_features": {"action": {"type": "ACTION", "shape": [7]}}, "max_state_dim": 32, "max_action_dim": 32}
    if config is not None:
        cfg = config
    if cfg != "absent":
        (d / "config.json").write_text(cfg if isinstance(cfg, str) else json.dumps(cfg))
    if weights is not None:
        (d / "model.safetensors").write_bytes(weights)
    if pre == "ok":
        step = {"registry_name": "normalizer_processor", "config": {"eps": 1e-8, "norm_map": {"STATE": "MEAN_STD", "ACTION": "MEAN_STD"}},
                "state_file": "normalizer.safetensors"}
        (d / "policy_preprocessor.json").write_text(json.dumps({"steps": [step]}))
    elif pre is not None:
        (d / "policy_preprocessor.json").write_text(str(pre))
    if stats is None:
        stats = {"observation.state.mean": torch.zeros(8), "observation.state.std": torch.ones(8),
                 "action.mean": torch.zeros(7), "action.std": torch.ones(7)}
    if stats != {}:
        save_file(stats, str(d / "normalizer.safetensors"))
    return d


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad_input")
    run = root / "existing_run"
    ript_cfg.main([*TOY, f"logging.output_dir={run}", "train.iterations=1", "eval.every=1000"])
    corrupt = root / "corrupt_run"
    shutil.copytree(run, corrupt)
    trainer = next(corrupt.glob("checkpoints/iter_*/trainer.pt"))
    trainer.write_bytes(trainer.read_bytes()[:100])  # truncated by a crash mid-copy
    (root / "a_file").write_text("not a directory")
    (root / "empty_dir").mkdir()
    bad_stats = {"observation.state.mean": torch.zeros(5), "observation.state.std": torch.ones(5), "action.mean": torch.zeros(7), "action.std": torch.ones(7)}
    nan_stats = {"observation.state.mean": torch.full((8,), float("nan")), "observation.state.std": torch.ones(8),
                 "action.mean": torch.zeros(7), "action.std": torch.ones(7)}
    out = {
        "run": run,
        "corrupt": corrupt,
        "file": root / "a_file",
        "empty": root / "empty_dir",
        "new": root / "new_run",
        "ck_no_config": _pi0_checkpoint(root / "ck_no_config", config="absent"),
        "ck_bad_json": _pi0_checkpoint(root / "ck_bad_json", config="{not json"),
        "ck_act": _pi0_checkpoint(root / "ck_act", config={"type": "act"}),
        "ck_no_weights": _pi0_checkpoint(root / "ck_no_weights", weights=None),
        "ck_empty_weights": _pi0_checkpoint(root / "ck_empty_weights", weights=b""),
        "ck_state9": _pi0_checkpoint(root / "ck_state9", config={"type": "pi0", "input_features": {"observation.state": {"shape": [9]}}}),
        "ck_small_pad": _pi0_checkpoint(root / "ck_small_pad", config={"type": "pi0", "max_action_dim": 6}),
        "ns_no_pre": _pi0_checkpoint(root / "ns_no_pre", pre=None),
        "ns_bad_pre": _pi0_checkpoint(root / "ns_bad_pre", pre="{broken"),
        "ns_no_file": _pi0_checkpoint(root / "ns_no_file", stats={}),
        "ns_5dim": _pi0_checkpoint(root / "ns_5dim", stats=bad_stats),
        "ns_nan": _pi0_checkpoint(root / "ns_nan", stats=nan_stats),
        "ck_no_tokenizer": _pi0_checkpoint(root / "ck_no_tokenizer"),  # complete but for PaliGemma's tokenizer
    }
    return out


# (case id, argv builder, substring the single error line must contain)
CASES: list[tuple[str, Callable[[dict[str, Path]], list[str]], str]] = [
    ("unknown_config", lambda f: ["--config-name", "nope"], "unknown config 'nope'"),
    ("unknown_key", lambda f: [*TOY, "optim.lrr=1"], "unknown key 'optim.lrr'"),
    ("bad_type", lambda f: [*TOY, "optim.lr=abc"], "optim.lr"),
    ("bad_choice", lambda f: [*TOY, "env.kind=mujoco"], "env.kind='mujoco' is not one of"),
    ("not_key_value", lambda f: [*TOY, "optim.lr"], "is not key=value"),
    ("unknown_flag", lambda f: [*TOY, "--fast"], "unknown flag '--fast'"),
    ("group_of_one", lambda f: [*TOY, "algo.group_size=1"], "algo.group_size=1 < 2"),
    ("eval_overlaps_train", lambda f: [*TOY, "eval.init_states=[0]"], "held-out"),
    ("minibatch_too_big", lambda f: [*TOY, "optim.minibatch_size=999"], "lower optim.minibatch_size"),
    ("zero_iterations", lambda f: [*TOY, "train.iterations=0"], "train.iterations=0"),
    ("negative_anchor", lambda f: [*TOY, "algo.anchor_coef=-0.1"], "algo.anchor_coef=-0.1 must be >= 0"),
    ("anchor_all_states_without_anchor", lambda f: [*TOY, "algo.anchor_all_states=true"], "needs algo.anchor_coef > 0"),
    ("positive_only_in_cfg", lambda f: [*TOY, "algo.mode=cfg", "algo.positive_only=true"], "algo.positive_only=true applies to algo.mode=weighted"),
    ("target_out_of_range", lambda f: [*TOY, "sampling.success_rate_target=1.5"], "sampling.success_rate_target"),
    ("bad_strategy", lambda f: [*TOY, "sampling.strategy=hardest"], "sampling.strategy"),
    ("zero_step_timeout", lambda f: [*TOY, "env.step_timeout_s=0"], "env.step_timeout_s=0"),
    ("zero_nonfinite_limit", lambda f: [*TOY, "optim.max_consecutive_nonfinite=0"], "optim.max_consecutive_nonfinite=0"),
    ("wsd_without_decay", lambda f: [*TOY, "optim.schedule=wsd"], "optim.decay_steps > 0"),
    ("zero_noise_scale", lambda f: [*TOY, "policy.noise_scale=0"], "policy.noise_scale=0.0 must be > 0"),
    ("toy_tolerance", lambda f: [*TOY, "env.toy_success_tol=0.9"], "env.toy_success_tol=0.9"),
    ("fp16_on_cpu", lambda f: [*TOY, "amp=fp16"], "amp=fp16 needs CUDA"),
    ("existing_run_no_resume", lambda f: [*TOY, f"logging.output_dir={f['run']}"], "checkpoint.resume=auto"),
    ("resume_auto_no_dir", lambda f: [*TOY, "checkpoint.resume=auto"], "needs logging.output_dir"),
    ("resume_from_nothing", lambda f: [*TOY, f"logging.output_dir={f['new']}", f"checkpoint.resume={f['empty']}"], "holds no complete checkpoint"),
    ("resume_corrupt", lambda f: [*TOY, f"logging.output_dir={f['corrupt']}", "checkpoint.resume=auto", "train.iterations=3"], "cannot resume from"),
    ("output_dir_is_file", lambda f: [*TOY, f"logging.output_dir={f['file']}"], "is a file"),
    ("output_dir_under_file", lambda f: [*TOY, f"logging.output_dir={f['file']}/sub"], "lies under the file"),
    ("no_disk_space", lambda f: [*TOY, f"logging.output_dir={f['new']}", "preflight.min_free_gb=1e9"], "GB free"),
    ("ckpt_missing", lambda f: [*TOY, "policy.kind=pi0", f"logging.output_dir={f['new']}", f"policy.path={f['new']}/nowhere"], "is not a directory"),
    ("ckpt_is_file", lambda f: [*TOY, "policy.kind=pi0", f"logging.output_dir={f['new']}", f"policy.path={f['file']}"], "is not a directory"),
    ("ckpt_no_config", lambda f: [*TOY, "policy.kind=pi0", f"logging.output_dir={f['new']}", f"policy.path={f['ck_no_config']}"], "no config.json"),
    ("ckpt_bad_json", lambda f: [*TOY, "policy.kind=pi0", f"logging.output_dir={f['new']}", f"policy.path={f['ck_bad_json']}"], "not JSON"),
    ("ckpt_wrong_policy", lambda f: [*TOY, "policy.kind=pi0", f"logging.output_dir={f['new']}", f"policy.path={f['ck_act']}"], "not pi0"),
    ("ckpt_no_weights", lambda f: [*TOY, "policy.kind=pi0", f"logging.output_dir={f['new']}", f"policy.path={f['ck_no_weights']}"], "model.safetensors"),
    ("ckpt_empty_weights", lambda f: [*TOY, "policy.kind=pi0", f"logging.output_dir={f['new']}", f"policy.path={f['ck_empty_weights']}"], "model.safetensors"),
    ("tokenizer_missing", lambda f: [*TOY, "policy.kind=pi0", f"logging.output_dir={f['new']}", f"policy.tokenizer_path={f['new']}/tok"], "policy.tokenizer_path"),
    ("ckpt_state_dim", lambda f: [*LIBERO, f"logging.output_dir={f['new']}", f"policy.path={f['ck_state9']}"], "9-dim 'observation.state'"),
    ("ckpt_action_padding", lambda f: [*LIBERO, f"logging.output_dir={f['new']}", f"policy.path={f['ck_small_pad']}"], "max_action_dim=6"),
    ("stats_no_preprocessor", lambda f: [*LIBERO, f"logging.output_dir={f['new']}", f"policy.path={f['ns_no_pre']}"], "no policy_preprocessor.json"),
    ("stats_bad_preprocessor", lambda f: [*LIBERO, f"logging.output_dir={f['new']}", f"policy.path={f['ns_bad_pre']}"], "cannot read"),
    ("stats_file_missing", lambda f: [*LIBERO, f"logging.output_dir={f['new']}", f"policy.path={f['ns_no_file']}"], "normalizer.safetensors"),
    ("stats_wrong_dims", lambda f: [*LIBERO, f"logging.output_dir={f['new']}", f"policy.path={f['ns_5dim']}"], "5-dim state statistics"),
    ("stats_nan", lambda f: [*LIBERO, f"logging.output_dir={f['new']}", f"policy.path={f['ns_nan']}"], "NaN"),
    ("real_config_without_path", lambda f: ["--config-name", "rl_training", "train.device=cpu", f"logging.output_dir={f['new']}"], "policy.path is not set"),
    ("ckpt_without_tokenizer", lambda f: [*LIBERO, f"logging.output_dir={f['new']}", f"policy.path={f['ck_no_tokenizer']}"], "set policy.tokenizer_path="),
    ("eval_init_state_out_of_range", lambda f: [*LIBERO, f"logging.output_dir={f['new']}", "eval.init_states=[9999]"],
     "eval.init_states has [9999] out of range: libero_object tasks [1] ship init states 0..49"),
    ("train_init_state_out_of_range", lambda f: [*LIBERO, f"logging.output_dir={f['new']}", "env.train_init_states=[0,50]"],
     "env.train_init_states has [50] out of range"),
    ("task_out_of_range", lambda f: [*LIBERO, f"logging.output_dir={f['new']}", "env.suite=libero_goal", "env.tasks=[99]"],
     "env.tasks has [99] out of range: libero_goal has tasks 0..9"),
    ("bad_fixture_placement", lambda f: [*TOY, "env.fixture_placement=random"], "env.fixture_placement='random' is not one of ['pinned', 'upstream']"),
    *([("fp16_without_cuda", lambda f: [*TOY, f"logging.output_dir={f['new']}", "train.device=auto", "amp=fp16"], "amp=fp16 needs CUDA and this machine has none")]
      if not torch.cuda.is_available() else []),
    ("device_not_here", lambda f: [*TOY, f"logging.output_dir={f['new']}", "train.device=cuda:99"], "train.device=cuda:99 but"),
]


@pytest.fixture(scope="module")
def run_hash(files: dict[str, Path]) -> str:
    return tree_hash(files["run"])


@pytest.mark.parametrize("case, argv, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2(
    case: str, argv: Callable[[dict[str, Path]], list[str]], expected: str, files: dict[str, Path], run_hash: str, capsys: pytest.CaptureFixture[str]
) -> None:
    corrupt_before = tree_hash(files["corrupt"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        ript_cfg.main(argv(files))
    assert info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert expected in lines[0], lines[0]
    assert "Traceback" not in err
    # nothing written: the existing runs are byte-identical and no new run directory appeared
    assert tree_hash(files["run"]) == run_hash
    assert tree_hash(files["corrupt"]) == corrupt_before
    assert not files["new"].exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        ript_cfg.main([*TOY, f"logging.output_dir={files['new']}", "train.device=cuda"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert info.value.code == 2 and lines == ["config error: train.device=cuda but CUDA is not available on this machine: set train.device=cpu (or auto)"]
    assert not files["new"].exists()


def _one_line_exit_2(main: Callable[[list[str]], object], argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(argv)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert info.value.code == 2 and len(lines) == 1 and lines[0].startswith("config error: ") and expected in lines[0], captured.err
    assert not captured.out.strip(), captured.out


@pytest.mark.parametrize("argv, expected", [
    (["suite=libero_goal", "tasks=[3,99]"], "tasks has [99] out of range: libero_goal has tasks 0..9"),
    (["suite=libero_10", "eval.init_states=[9999]"], "eval.init_states has [9999] out of range: libero_10 tasks"),
    (["suites=[libero_goal,libero_91]"], "suite=libero_91 is unknown"),
], ids=["task", "init_state", "suite"])
def test_eval_libero_refuses_out_of_range_contexts(argv: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import eval_libero

    out = tmp_path / "eval"
    _one_line_exit_2(eval_libero.main, [*argv, f"out={out}"], expected, capsys)
    assert not out.exists()


@pytest.mark.parametrize("argv, expected", [
    (["tasks=[libero_spatial:2,libero_90:90]"], "task libero_90:90 has [90] out of range: libero_90 has tasks 0..89"),
    (["tasks=[libero_goal:8]", "init_states=[0,50]"], "init_states has [50] out of range: libero_goal tasks [8] ship init states 0..49"),
], ids=["task", "init_state"])
def test_collect_demos_refuses_out_of_range_contexts(argv: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import collect_demos

    out = tmp_path / "demos"
    _one_line_exit_2(collect_demos.main, [*argv, f"out={out}"], expected, capsys)
    assert not out.exists()


def test_at_least_twenty_cases() -> None:
    assert len(CASES) >= 20 and len({c[0] for c in CASES}) == len(CASES)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "recipes" / "ript_cfg.py"), *args], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_real_subprocesses(files: dict[str, Path], run_hash: str) -> None:
    """Through a real interpreter: exit 2 with exactly one stderr line; debug=true shows the traceback instead."""
    for args, expected in (
        ([*TOY, "optim.lr=-1"], "optim.lr=-1.0 must be > 0"),
        ([*TOY, f"logging.output_dir={files['run']}", "train.iterations=5"], "already holds a run"),
        ([*LIBERO, f"logging.output_dir={files['new']}", f"policy.path={files['ns_5dim']}"], "5-dim state statistics"),
        ([*LIBERO, f"logging.output_dir={files['new']}", "eval.init_states=[9999]"], "eval.init_states has [9999] out of range"),
    ):
        res = _cli(*args)
        lines = [line for line in res.stderr.splitlines() if line.strip()]
        assert res.returncode == 2 and len(lines) == 1 and expected in lines[0], res.stderr[-2000:]
    res = _cli(*TOY, "optim.lr=-1", "debug=true")
    assert res.returncode != 0 and "Traceback" in res.stderr and "ConfigError" in res.stderr
    assert tree_hash(files["run"]) == run_hash and not files["new"].exists()
