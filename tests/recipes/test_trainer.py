"""The one trainer's run-level features: tasks across suites, a start evaluation, a time budget, resume of both."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "recipes"))

import ript_cfg  # noqa: E402

from ript.algos.sampling import ContextSampler  # noqa: E402
from ript.recipes.training.config import ConfigError, load_config, task_specs  # noqa: E402
from ript.recipes.training.factories import max_decision_steps, worker_layout  # noqa: E402

TOY = ["--config-name", "toy", "logging.progress=false"]


def test_tasks_across_suites_get_their_own_workers_and_episode_length() -> None:
    cfg = load_config("quick_test", ['env.tasks=["libero_spatial:2",libero_object:1,"libero_goal:8"]', "env.num_envs=3", "env.max_steps=null"])
    assert [(s.suite, s.task_id) for s in task_specs(cfg)] == [("libero_spatial", 2), ("libero_object", 1), ("libero_goal", 8)]
    layout = worker_layout(cfg)
    assert layout.worker_options == [[0], [1], [2]] and layout.env_task_ids == [2, 1, 8]
    assert max_decision_steps(cfg) == 300 // 5  # the longest suite's episode (libero_goal)
    one_suite = worker_layout(load_config("quick_test", ["env.tasks=[0,1,2]", "env.num_envs=2"]))
    assert one_suite.worker_options == [[0], [1], [0, 1]]  # a task without a worker of its own borrows its suite's
    assert [s.label for s in task_specs(load_config("quick_test", ["env.tasks=[3]"]))] == ["task3"]


@pytest.mark.parametrize("tasks, envs, message", [
    ('["libero_spatial:2","libero_goal:8"]', 1, "spans 2 suites .* set env.num_envs=2"),
    ('["libero_spatial:2","libero_spatial:2"]', 2, "names a task twice"),
    ('["libero_nope:1"]', 1, "not a task id or 'suite:id'"),
    ('["libero_goal"]', 1, "not a task id or 'suite:id'"),
])
def test_bad_task_lists_are_one_line_errors(tasks: str, envs: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config("quick_test", [f"env.tasks={tasks}", f"env.num_envs={envs}"])


def test_balanced_sampling_gives_every_task_its_share_of_each_round() -> None:
    sampler = ContextSampler([(t, s) for t in range(3) for s in range(10)], "balanced", seed=4)
    for _ in range(5):
        draws = sampler.sample(12)
        assert sorted(t for t, _ in draws) == [0] * 4 + [1] * 4 + [2] * 4


def test_start_evaluation_and_time_budget_survive_a_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """eval.at_start logs iteration 0; train.max_minutes stops with an end evaluation; a resume keeps both and goes on."""
    out = tmp_path / "run"
    common = [*TOY, f"logging.output_dir={out}", "eval.at_start=true", "eval.every=1000", "train.iterations=5"]
    first = ript_cfg.main([*common, "train.max_minutes=1e-6"])  # any iteration overruns it: one, then stop
    assert first["iterations"] == 1 and first["stopped"].startswith("time budget: train.max_minutes=1e-06")
    evals = json.loads((out / "evaluations.json").read_text())["evaluations"]
    assert [e["iteration"] for e in evals] == [0, 1]  # the start, and the end although eval.every=1000
    assert evals[0]["tasks"]["task0"]["episodes"] == 2 and set(evals[0]["tasks"]["task0"]["by_init_state"]) == {"100", "101"}
    lo, hi = evals[0]["ci95"]
    assert 0 <= lo <= evals[0]["success_rate"] <= hi <= 1
    assert "held-out task0:" in capsys.readouterr().out
    second = ript_cfg.main([*common, "checkpoint.resume=auto", "train.max_minutes=60"])
    assert second["iterations"] == 5 and second["stopped"] == "completed"
    evals = json.loads((out / "evaluations.json").read_text())["evaluations"]
    assert [e["iteration"] for e in evals] == [0, 1, 5]  # the start evaluation was not redone
    assert second["ript_minutes"] > first["ript_minutes"]


def test_toy_learning_check_through_the_trainer(tmp_path: Path) -> None:
    """configs/toy_learning.yaml, weighted, seed 0: held-out success at least doubles and gains 30 points."""
    summary = ript_cfg.main(["--config-name", "toy_learning", f"logging.output_dir={tmp_path / 'run'}"])
    start, end = summary["evaluation_history"][0]["success_rate"], summary["evaluation_history"][-1]["success_rate"]
    assert 0.05 <= start <= 0.4, f"warm start out of range: {start}"
    assert end >= 2 * start and end >= start + 0.30, f"no real improvement: {start:.3f} -> {end:.3f}"


def test_a_missing_final_evaluation_is_retried_and_resume_completes_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker fault during the last evaluation: the trainer retries it once; if that fails too, a resume runs it alone."""
    from ript.recipes.training.trainer import Trainer

    real, failures = Trainer.evaluate, {"left": 2}

    def flaky(self: Trainer, it: int, record_video: bool) -> dict[str, float]:
        if it == 1 and failures["left"] > 0:  # as after an EnvFault: nothing recorded, NaN returned
            failures["left"] -= 1
            return {"eval/success_rate": float("nan")}
        return real(self, it, record_video)

    monkeypatch.setattr(Trainer, "evaluate", flaky)
    out = tmp_path / "run"
    common = [*TOY, f"logging.output_dir={out}", "eval.at_start=true", "train.iterations=5", "train.max_minutes=1e-6"]
    first = ript_cfg.main(common)  # the iteration's evaluation and the retry both fail
    assert first["iterations"] == 1 and failures["left"] == 0
    assert [e["iteration"] for e in json.loads((out / "evaluations.json").read_text())["evaluations"]] == [0]
    second = ript_cfg.main([*common, "checkpoint.resume=auto"])  # out of budget: no training, only the missing evaluation
    assert second["iterations"] == 1 and second["ript_minutes"] == first["ript_minutes"]
    assert [e["iteration"] for e in second["evaluation_history"]] == [0, 1]
    failures["left"] = 1
    third = ript_cfg.main([*common[:-2], f"logging.output_dir={tmp_path / 'retry'}", "train.iterations=1"])
    assert failures["left"] == 0 and [e["iteration"] for e in third["evaluation_history"]] == [0, 1]  # retried in the same run


def test_thread_counts_per_phase(monkeypatch: pytest.MonkeyPatch) -> None:
    """Collection leaves one core per env worker process, updates take every core; explicit counts win; OMP_NUM_THREADS caps."""
    import os

    from ript.recipes.training.factories import phase_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert phase_threads(load_config("quick_test", ["env.num_envs=2"])) == (2, 4)
    assert phase_threads(load_config("quick_test", ["env.num_envs=1"])) == (4, 4)  # the simulator runs in this process
    assert phase_threads(load_config("quick_test", ["env.num_envs=6"])) == (1, 4)
    assert phase_threads(load_config("quick_test", ["train.collect_threads=3", "train.update_threads=2"])) == (3, 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # torchrun's default per rank
    assert phase_threads(load_config("quick_test", ["env.num_envs=1"])) == (1, 1)
    with pytest.raises(ConfigError, match="train.update_threads=0 must be >= 1"):
        load_config("quick_test", ["train.update_threads=0"])


def test_the_trainer_acts_and_updates_with_its_thread_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from ript.recipes.training import trainer as trainer_module

    seen: dict[str, set[int]] = {"act": set(), "update": set()}
    real_update, real_forward = trainer_module.update_policy, trainer_module.Trainer.collect

    def update(*args, **kwargs):
        seen["update"].add(torch.get_num_threads())
        return real_update(*args, **kwargs)

    def collect(self, *args, **kwargs):
        seen["act"].add(torch.get_num_threads())
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "update_policy", update)
    monkeypatch.setattr(trainer_module.Trainer, "collect", collect)
    before = torch.get_num_threads()
    ript_cfg.main([*TOY, f"logging.output_dir={tmp_path / 'run'}", "train.iterations=1", "train.collect_threads=1", "train.update_threads=2"])
    assert seen == {"act": {1}, "update": {2}} and torch.get_num_threads() == before
