"""recipes/tune.py: Optuna studies over the trainer on the toy env (reduced: few iterations, few eval episodes).

A study from a deliberately bad start finds better and prunes; two workers share one SQLite
study; a killed study resumes; bad spaces are one `config error:` line before any trial.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "recipes"))

import ript_cfg  # noqa: E402
import tune  # noqa: E402
from ript.recipes.training.config import load_config  # noqa: E402

# the cheapest toy run that still evaluates: for the storage and resume tests, where learning does not matter
TINY = {"train.iterations": 1, "eval.every": 1, "eval.episodes": 4, "logging.progress": False, "logging.video_every": 0}


def write_space(path: Path, study: dict[str, Any], fixed: dict[str, Any], params: dict[str, Any], enqueue: list[Any] | None = None) -> Path:
    path.write_text(yaml.safe_dump({"study": study, "fixed": fixed, "params": params, **({"enqueue": enqueue} if enqueue else {})}))
    return path


def load(study_dir: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{study_dir / 'study.db'}")


# configs/toy_learning.yaml (a BC-warmed policy that RIPT-CFG improves) cut down: 3 iterations of 4 kept groups,
# 32 held-out episodes at the start and after each. The smoke toy (tune_toy_quick) is cheaper but does not
# learn measurably in 3 iterations, so it cannot show a study beating its start.
LEARNING = {"train.iterations": 3, "eval.every": 1, "eval.episodes": 32, "eval.init_states": list(range(1000, 1032)),
            "env.toy_bc_steps": 150, "algo.target_groups": 4, "algo.max_context_draws": 16, "optim.minibatch_size": 32,
            "policy.num_inference_steps": 5}


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 8 short toy_learning runs: minutes on 2 free cores, far more on a loaded box
def test_study_beats_a_bad_start_prunes_and_saves_a_runnable_best(tmp_path: Path) -> None:
    space = write_space(
        tmp_path / "learn.yaml",
        {"base": "toy_learning", "n_trials": 8, "sampler_seed": 0, "pruner": {"kind": "median", "n_startup_trials": 2, "n_warmup_steps": 1}},
        LEARNING,
        {"optim.lr": {"log_uniform": [1e-6, 1e-2]}, "algo.mode": {"categorical": ["weighted", "cfg"]},
         "algo.guidance": {"uniform": [1.0, 3.0], "when": {"algo.mode": "cfg"}}},
        enqueue=[{"optim.lr": 1e-6, "algo.mode": "weighted"}],
    )
    study_dir = tmp_path / "study"
    study = tune.main(tune.TuneArgs(space=str(space), study_dir=str(study_dir)))
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 8 and not [t for t in trials if t.state == TrialState.FAIL]
    start = trials[0]
    assert start.params["optim.lr"] == pytest.approx(1e-6) and start.state == TrialState.COMPLETE  # the enqueued start ran first
    assert study.best_value > start.value + 0.1, (start.value, study.best_value)
    assert any(t.state == TrialState.PRUNED for t in trials)
    for t in trials:  # one run directory per trial, with its evaluations; conditional key only in cfg trials
        assert json.loads((Path(t.user_attrs["run_dir"]) / "evaluations.json").read_text())["evaluations"]
        assert ("algo.guidance" in t.params) == (t.params["algo.mode"] == "cfg")
    # best.yaml runs as it is through the recipe's CLI (dry run: resolved config + policy, no training)
    best = load_config("best", [], study_dir)
    assert best.optim.lr == pytest.approx(study.best_params["optim.lr"]) and best.train.iterations == 3
    ript_cfg.main(["--config-path", str(study_dir), "--config-name", "best", "--dry-run"])
    assert (study_dir / "optimisation_history.png").stat().st_size > 0
    assert (study_dir / "param_importances.png").stat().st_size > 0


def _worker(space: Path, study_dir: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(ROOT / "recipes" / "tune.py"), f"space={space}", f"study_dir={study_dir}"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_two_workers_share_one_sqlite_study(tmp_path: Path) -> None:
    space = write_space(tmp_path / "shared.yaml", {"base": "toy", "n_trials": 4, "pruner": {"kind": "none"}}, TINY,
                        {"optim.lr": {"log_uniform": [1e-5, 1e-2]}})
    study_dir = tmp_path / "study"
    study_dir.mkdir()
    tune.open_study(tune.load_space(str(space)), f"sqlite:///{study_dir / 'study.db'}")  # created once: the workers race only on trials
    workers = [_worker(space, study_dir) for _ in range(2)]
    outs = [w.communicate(timeout=1200)[0].decode() for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outs
    trials = load(study_dir, "shared").get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 4, [(t.number, t.state) for t in trials]
    assert all(t.user_attrs.get("surplus") for t in trials if t.state != TrialState.COMPLETE)  # nothing else failed
    dirs = {t.user_attrs["run_dir"] for t in done}
    assert len(dirs) == 4 and all((Path(d) / "evaluations.json").is_file() for d in dirs)
    assert all("best trial" in out for out in outs)  # both workers joined the same study and reported


@pytest.mark.slow
def test_killed_study_resumes_and_marks_the_killed_trial_failed(tmp_path: Path) -> None:
    space = write_space(tmp_path / "killed.yaml", {"base": "toy", "n_trials": 2, "heartbeat_s": 1, "grace_s": 3, "pruner": {"kind": "none"}},
                        {**TINY, "train.iterations": 3}, {"optim.lr": {"log_uniform": [1e-5, 1e-2]}})
    study_dir = tmp_path / "study"
    worker = _worker(space, study_dir)
    first_run = study_dir / "trials" / "trial_0000"
    deadline = time.time() + 600
    while not (first_run / "metrics.csv").is_file():  # mid-trial: it has trained an iteration or evaluated
        assert worker.poll() is None and time.time() < deadline, worker.stdout.read().decode() if worker.stdout else ""
        time.sleep(0.5)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    assert load(study_dir, "killed").trials[0].state == TrialState.RUNNING  # nobody told the storage
    time.sleep(4)  # past grace_s: the dead worker's heartbeat is stale
    study = tune.main(tune.TuneArgs(space=str(space), study_dir=str(study_dir)))
    trials = study.get_trials(deepcopy=False)
    assert trials[0].state == TrialState.FAIL and first_run.is_dir() and (first_run / "config.yaml").is_file()
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == 2 and len(trials) == 3
    assert (study_dir / "best.yaml").is_file()


GOOD = {"optim.lr": {"log_uniform": [1e-5, 1e-2]}}


@pytest.mark.parametrize(
    "params, fixed, expected",
    [
        ({"optim.lrr": {"log_uniform": [1e-5, 1e-2]}}, {}, "unknown key 'optim.lrr'"),
        ({"optim.lr": {"uniform": [0.01, 0.001]}}, {}, "empty range"),
        ({"optim.lr": {"log_uniform": [0.0, 0.01]}}, {}, "log scale needs low > 0"),
        ({"optim.lr": {"log_uniform": [-1.0, 0.01]}}, {}, "log scale needs low > 0"),
        ({"optim.epochs": {"categorical": ["two", "four"]}}, {}, "optim.epochs"),
        ({"optim.epochs": {"uniform": [1.0, 4.0]}}, {}, "could not be converted to Integer"),
        ({"optim.lr": {"normal": [0.0, 1.0]}}, {}, "unknown distribution"),
        ({"algo.guidance": {"uniform": [1.0, 3.0], "when": {"algo.mode": "cfg"}}}, {}, "not a categorical parameter of the space"),
        (GOOD, {"optim.lrx": 1}, "unknown key 'optim.lrx'"),
    ],
)
def test_bad_space_is_one_config_error_line_before_any_trial(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             params: dict[str, Any], fixed: dict[str, Any], expected: str) -> None:
    space = write_space(tmp_path / "bad.yaml", {"base": "toy"}, fixed, params)
    for extra in ([], ["--dry-run"]):
        with pytest.raises(SystemExit) as info:
            tune.cli([f"space={space}", f"study_dir={tmp_path / 'study'}", *extra])
        assert info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("config error:") and expected in err[0], err
    assert not (tmp_path / "study").exists()  # no storage, no trial


def test_dry_run_prints_the_space_and_starts_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tune.cli(["space=tune_toy", f"study_dir={tmp_path / 'study'}", "--dry-run"])
    out = capsys.readouterr().out
    assert "algo.guidance: uniform [1.0, 3.0]  (when algo.mode in ['cfg'])" in out and "base config 'toy_learning'" in out
    assert not (tmp_path / "study").exists()
    tune.cli(["space=tune_libero", "--storage", "postgresql://nobody@nowhere/db", "--dry-run"])  # validated, never connected
    assert "base config 'libero_learning'" in capsys.readouterr().out


def test_objective_final_and_auc() -> None:
    from ript.recipes.training.tuning import objective_value

    curve = [(0, 0.2), (2, 0.6), (4, 0.6)]
    assert objective_value(curve, "final") == 0.6
    assert objective_value(curve, "auc") == pytest.approx((2 * 0.4 + 2 * 0.6) / 4)
    assert objective_value([(0, 0.2), (4, float("nan"))], "final") == 0.2
