"""benchmarks/learning_libero.py: a thin driver of the trainer; its verdict, and seeds that resume through the recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def bench(import_benchmark):
    return import_benchmark("learning_libero")


def _run(seed: int, start: dict[str, float], end: dict[str, float]) -> dict:
    return {"seed": seed, "start": start, "end": end}


def test_verdict_averages_gains_over_seeds_and_needs_every_task_to_hold(bench) -> None:
    runs = [_run(0, {"a": 0.2, "b": 0.4}, {"a": 0.5, "b": 0.6}), _run(1, {"a": 0.3, "b": 0.4}, {"a": 0.4, "b": 0.5})]
    v = bench.verdict(runs)
    assert v["gain_by_task"] == pytest.approx({"a": 0.2, "b": 0.15}) and v["mean_gain"] == pytest.approx(0.175) and not v["passes"]
    v = bench.verdict([_run(0, {"a": 0.2, "b": 0.4}, {"a": 0.9, "b": 0.38})])
    assert v["mean_gain"] >= 0.2 and not v["passes"]  # task b fell
    assert bench.verdict([_run(0, {"a": 0.2}, {"a": 0.45})])["passes"]


@pytest.mark.slow
def test_a_seed_runs_through_the_recipe_across_suites_and_resumes(bench, tmp_path: Path) -> None:
    """Real LIBERO, two tasks from two suites, one iteration; then the same seed extended by one resumes the recipe's run."""
    small = ['env.tasks=["libero_spatial:2","libero_object:1"]', "env.num_envs=2", "env.max_steps=40", "algo.demo_replay=0",
             "algo.group_size=2", "algo.contexts_per_iteration=2", "algo.target_groups=1", "algo.max_context_draws=2",
             "optim.minibatch_size=2", "eval.episodes=1", "eval.init_states=[40]"]
    check = bench.LiberoCheck(seeds=[3], recipe=[*small, "train.iterations=1"], out=str(tmp_path))
    first = bench.main(check)
    run = first["runs"][0]
    assert set(run["start"]) == {"libero_spatial:2", "libero_object:1"} and run["start_iteration"] == 0 and run["end_iteration"] == 1
    assert run["fixture_placement"] == {"train": "pinned", "eval": "upstream"} and run["command"].endswith("train.iterations=1")
    assert run["start_by_state"]["libero_spatial:2"].keys() == {40}
    saved = json.loads((tmp_path / "learning_libero.json").read_text())
    assert saved["runs"][0]["start"] == run["start"] and (tmp_path / "learning_libero.png").is_file()
    second = bench.main(bench.LiberoCheck(seeds=[3], recipe=[*small, "train.iterations=2"], out=str(tmp_path)))["runs"][0]
    assert second["start"] == run["start"] and second["iterations"] == 2 and second["end_iteration"] == 2  # start kept, not redone
    evals = json.loads((tmp_path / "seed3" / "evaluations.json").read_text())["evaluations"]
    assert [e["iteration"] for e in evals] == [0, 1, 2]
