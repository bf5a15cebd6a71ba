"""benchmarks/learning_libero.py: its settings are checked before any LIBERO worker starts, and a start evaluation is reused only when it measured the same thing."""

import json
from dataclasses import asdict

import pytest


@pytest.fixture(scope="module")
def bench(import_benchmark):
    return import_benchmark("learning_libero")


@pytest.mark.parametrize("argv, message", [
    (["--buffer-iterations", "0"], "--buffer-iterations must be >= 1"),
    (["--group-size", "1"], "--group-size must be >= 2"),
    (["--eval-init-states", "39", "40"], "must not overlap"),
    (["--mode", "ppo"], "use weighted or cfg"),
    (["--tasks", "libero_10:0"], "not among the checkpoint's tasks"),
    (["--anchor-all-states"], "needs --anchor > 0"),
    (["--positive-only", "--mode", "cfg"], "--positive-only applies to --mode weighted only"),
    (["--mode", "cfg"], "pass --no-positive-only with --mode cfg"),  # positive-only is a default
    (["--freeze", "expert"], "--freeze expert: use one of none, vision, trunk"),
    (["--target-steps", "-1"], "--target-steps must be >= 0"),
    (["--demo-replay", "-1"], "--demo-replay must be >= 0"),
    (["--demo-replay", "2", "--target-steps", "20"], "cannot be combined with --target-steps"),
    (["--target-steps", "20"], "pass --demo-replay 0"),  # demo replay is a default
    (["--demo-replay", "2", "--demo-dataset", "/nonexistent/demos"], "no LeRobotDataset at /nonexistent/demos"),
])
def test_bad_settings_fail_before_any_env_starts(bench, capsys, argv, message):
    with pytest.raises(SystemExit):
        bench.main(argv)
    assert message in capsys.readouterr().err


def _previous(tmp_path, bench, **changes):
    cfg = bench.LearnConfig(**changes)
    tasks = ["libero_spatial:2", "libero_object:1"]
    path = tmp_path / "learning_libero.json"
    path.write_text(json.dumps({"config": asdict(cfg), "tasks": tasks,
                                "evals": [{"iteration": 0, "success": {tasks[0]: 0.3, tasks[1]: 0.5}}]}))
    return path, tasks


def test_start_evaluation_is_reused_when_it_measured_the_same_episodes(bench, tmp_path):
    path, tasks = _previous(tmp_path, bench, lr=3e-4)  # RIPT settings may differ
    cfg = bench.LearnConfig(reuse_start=str(path), lr=1e-5)
    assert bench.reused_start(cfg, tasks) == {tasks[0]: 0.3, tasks[1]: 0.5}
    assert bench.reused_start(cfg, tasks[1:]) == {tasks[1]: 0.5}  # a run on one of the tasks reuses its number


@pytest.mark.parametrize("change", [{"seed": 1}, {"eval_repeats": 3}, {"eval_init_states": [41, 42]}])
def test_start_evaluation_of_other_episodes_is_refused(bench, tmp_path, change):
    path, tasks = _previous(tmp_path, bench)
    cfg = bench.LearnConfig(reuse_start=str(path), **change)
    with pytest.raises(SystemExit, match="drop --reuse-start"):
        bench.reused_start(cfg, tasks)
    with pytest.raises(SystemExit, match="tasks lack"):
        bench.reused_start(bench.LearnConfig(reuse_start=str(path)), tasks + ["libero_10:0"])


@pytest.mark.slow
def test_an_evaluation_only_run_records_successes_per_held_out_state(bench, tmp_path):
    """Real LIBERO and the shipped policy (spatial: the shortest horizon): --max-iterations 0 evaluates once and keeps each init state's count."""
    result = bench.main(["--tasks", "libero_spatial:2", "--eval-init-states", "40", "41", "--eval-repeats", "1",
                         "--max-iterations", "0", "--demo-replay", "0", "--out", str(tmp_path)])
    start = result["evals"][0]
    by_state = start["successes_by_state"]["libero_spatial:2"]
    assert set(by_state) == {40, 41} and all(n in (0, 1) for n in by_state.values())
    assert start["success"]["libero_spatial:2"] == sum(by_state.values()) / 2
    saved = json.loads((tmp_path / "learning_libero.json").read_text())
    assert saved["finished"] and saved["evals"][0]["successes_by_state"]["libero_spatial:2"] == {str(k): v for k, v in by_state.items()}


def test_demo_replay_draws_only_demos_the_checkpoint_was_cloned_on(bench):
    """A 10-demo start must not be shown the other 30 states' demos: that would be more behaviour cloning, not RL."""
    assert bench.replay_init_states(list(range(40)), set(range(40)), list(range(10))) == list(range(10))
    assert bench.replay_init_states([3, 5, 12], {3, 12}, list(range(40))) == [3, 12]  # the dataset lacks state 5
    assert bench.replay_init_states([20, 21], set(range(40)), list(range(10))) == []
