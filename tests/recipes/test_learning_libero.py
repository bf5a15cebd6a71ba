"""benchmarks/learning_libero.py: its settings are checked before any LIBERO worker starts, and a start evaluation is reused only when it measured the same thing."""

import json
from dataclasses import asdict

import pytest
import torch


@pytest.fixture(scope="module")
def bench(import_benchmark):
    return import_benchmark("learning_libero")


@pytest.mark.parametrize("argv, message", [
    (["--buffer-iterations", "0"], "--buffer-iterations must be >= 1"),
    (["--ema-decay", "1"], "--ema-decay must be in [0, 1)"),
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
def test_a_run_records_each_held_out_state_and_resumes_where_it_stopped(bench, tmp_path):
    """Real LIBERO and the shipped policy (spatial: the shortest horizon): one iteration, then --resume extends it by one.

    The resumed run keeps the first run's numbers and draws the group init states an unbroken run would have drawn.
    """
    argv = ["--tasks", "libero_spatial:2", "--eval-init-states", "40", "41", "--eval-repeats", "1", "--group-size", "2",
            "--groups-per-task", "1", "--epochs", "1", "--demo-replay", "0", "--out", str(tmp_path)]
    first = bench.main(argv + ["--max-iterations", "1"])
    start = first["evals"][0]
    by_state = start["successes_by_state"]["libero_spatial:2"]
    assert set(by_state) == {40, 41} and all(n in (0, 1) for n in by_state.values())
    assert start["success"]["libero_spatial:2"] == sum(by_state.values()) / 2
    saved = json.loads((tmp_path / "learning_libero.json").read_text())
    assert saved["finished"] and saved["evals"][0]["successes_by_state"]["libero_spatial:2"] == {str(k): v for k, v in by_state.items()}

    with pytest.raises(SystemExit, match="already holds a run"):  # a fresh run would overwrite it
        bench.main(argv + ["--max-iterations", "1"])
    assert json.loads((tmp_path / "learning_libero.json").read_text()) == saved

    resumed = bench.main(argv + ["--max-iterations", "2", "--resume"])
    assert resumed["iterations"][0] == first["iterations"][0] and len(resumed["iterations"]) == 2
    assert [e["iteration"] for e in resumed["evals"]] == [0, 1, 2] and resumed["evals"][:2] == first["evals"]
    g = torch.Generator().manual_seed(1)  # learning_libero's group-start stream (seed + 1)
    draws = [bench.draw_group_starts(list(range(40)), 1, 1, g) for _ in range(2)]
    assert [p["group_init_states"] for p in resumed["iterations"]] == draws
    assert (tmp_path / "checkpoints" / "iter_000002").is_dir() and not (tmp_path / "checkpoints" / "iter_000001").exists()


def test_a_resume_with_other_settings_or_nothing_to_resume_is_refused(bench, tmp_path):
    """--resume splices onto a stopped run only what continues the same experiment; errors name the fix."""
    argv = ["--demo-replay", "0", "--out", str(tmp_path)]
    with pytest.raises(SystemExit, match="holds no checkpoint of a stopped run; drop --resume"):
        bench.main(argv + ["--resume"])
    cfg = bench.LearnConfig(demo_replay=0, out=str(tmp_path))
    (tmp_path / "learning_libero.json").write_text(json.dumps({"config": asdict(cfg)}))
    bench.Checkpointer(tmp_path).save(1, policy=torch.nn.Linear(1, 1))
    with pytest.raises(SystemExit, match=r"\['group_size', 'lr'\] differ from the stopped run's .* pass the same settings"):
        bench.main(argv + ["--resume", "--lr", "3e-5", "--group-size", "8", "--minutes", "90"])  # a larger budget is fine


def test_demo_replay_draws_only_demos_the_checkpoint_was_cloned_on(bench):
    """A 10-demo start must not be shown the other 30 states' demos: that would be more behaviour cloning, not RL."""
    assert bench.replay_init_states(list(range(40)), set(range(40)), list(range(10))) == list(range(10))
    assert bench.replay_init_states([3, 5, 12], {3, 12}, list(range(40))) == [3, 12]  # the dataset lacks state 5
    assert bench.replay_init_states([20, 21], set(range(40)), list(range(10))) == []
    # per-task counts (bc_config's cloned_init_states): any task's cloned state may be drawn
    per_task = {"libero_spatial:2": list(range(10)), "libero_object:1": list(range(15)), "libero_goal:8": list(range(5))}
    assert bench.replay_init_states(list(range(40)), set(range(40)), per_task) == list(range(15))


def test_a_run_stopped_before_a_setting_existed_resumes_as_it_ran(bench, tmp_path):
    """A checkpoint's json lacks settings added since; it ran as if they were off (not today's defaults), so only that resumes."""
    saved = asdict(bench.LearnConfig(out=str(tmp_path)))
    del saved["balance_tasks"]
    (tmp_path / "learning_libero.json").write_text(json.dumps({"config": saved}))
    bench.Checkpointer(tmp_path).save(1, policy=torch.nn.Linear(1, 1))
    assert bench.stopped_run(bench.LearnConfig(out=str(tmp_path), resume=True, balance_tasks=False)) is not None
    with pytest.raises(SystemExit, match=r"\['balance_tasks'\] differ from the stopped run's"):
        bench.stopped_run(bench.LearnConfig(out=str(tmp_path), resume=True, balance_tasks=True))
