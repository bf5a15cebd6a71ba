"""Reliability of the recipe under real faults: killed/hung env workers, preemption signals,
non-finite updates, and curriculum sampling that stops drawing mastered contexts."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "recipes"))

import ript_cfg  # noqa: E402

from ript.recipes.training import faults, trainer  # noqa: E402
from ript.recipes.training.checkpoint import POLICY_STATE_FILE  # noqa: E402

TOY = ["--config-name", "toy", "eval.every=1000", "checkpoint.keep_last=10"]


def _rows(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(open(out / "metrics.csv")))


def _params(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt / "policy" / POLICY_STATE_FILE, weights_only=True)


class _Recorder(faults.EnvSupervisor):
    """The recipe's supervisor, plus a hook that acts on a worker before chosen `next(batches)` calls."""

    instances: list["_Recorder"] = []
    actions: dict[int, str] = {}  # call number -> "kill" | "stop"

    def __init__(self, *args, **kwargs) -> None:
        self.calls = 0
        super().__init__(*args, **kwargs)
        _Recorder.instances.append(self)

    @property
    def batches(self):
        return self._wrapped

    @batches.setter
    def batches(self, it) -> None:
        sup = self

        class Faulty:  # the real collector iterator, with a fault injected before some calls
            def __iter__(self):
                return self

            def __next__(self):
                sup.calls += 1
                action = _Recorder.actions.get(sup.calls)
                if action is not None:
                    pid = faults.worker_processes(sup.env)[1].pid
                    os.kill(pid, signal.SIGKILL if action == "kill" else signal.SIGSTOP)
                return next(it)

        self._wrapped = Faulty()


@pytest.mark.slow
def test_killed_and_hung_workers_are_restarted_and_training_continues(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SIGKILLed ParallelEnv worker (mid-rollout), later a SIGSTOPped (hung) one: both rebuilt, groups discarded, run completes."""
    _Recorder.instances = []
    monkeypatch.setattr(trainer, "EnvSupervisor", _Recorder)
    out = tmp_path / "faults"
    # call 2: mid-rollout of iteration 1; call 2 + 10: well after the restart (iteration 2 or 3)
    _Recorder.actions = {2: "kill", 12: "stop"}
    args = [*TOY, "env.toy_parallel=true", "env.step_timeout_s=3", "env.max_restarts=2", "checkpoint.every=1", "train.iterations=3"]
    start = time.monotonic()
    res = ript_cfg.main([*args, f"logging.output_dir={out}"])
    sup = _Recorder.instances[-1]
    assert sup.calls >= 12, "the run ended before the hang was injected"
    assert sup.restarts == 2 and sup.faults == 2 and res["iterations"] == 3 and res["stopped"] == "completed"
    assert time.monotonic() - start < 150  # the hang cost about env.step_timeout_s, not torchrl's 10000 s
    rows = _rows(out)
    assert [r["iteration"] for r in rows] == ["1", "2", "3"]
    faults_per_iter = [int(r["faults/env_faults"]) for r in rows]
    assert faults_per_iter[0] == 1 and sum(faults_per_iter) == 2
    assert int(rows[-1]["faults/env_restarts"]) == 2
    assert all(int(r["faults/groups_discarded"]) >= f for r, f in zip(rows, faults_per_iter))
    assert int(rows[0]["groups/contexts_drawn"]) > int(rows[0]["faults/groups_discarded"])  # drawing went on after the fault
    # the policy kept training through both faults
    a, b = _params(out / "checkpoints" / "iter_000001"), _params(out / "checkpoints" / "iter_000003")
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_env_supervisor_classifies_and_gives_up_after_max_restarts() -> None:
    """In-process envs: a bug is re-raised as is; restarts past env.max_restarts stop the run in one line."""
    from ript.recipes.training.toy_env import make_context_toy_env

    built: list[int] = []

    def build(attempt: int):
        built.append(attempt)
        env = make_context_toy_env(1, n_action_steps=2, max_steps=3)
        return env, type("C", (), {"shutdown": lambda self: None, "__iter__": lambda self: iter(())})()

    policy = torch.nn.Linear(1, 1)
    sup = faults.EnvSupervisor(build, policy=policy, step_timeout_s=0.3, max_restarts=1, log=lambda m: None)
    try:
        with pytest.raises(KeyError):  # not a worker fault: surfaces unchanged
            with sup.guard():
                raise KeyError("bug")
        with pytest.raises(faults.EnvFault, match="hung"):  # no progress (no policy call) for 0.3 s
            with sup.guard():
                time.sleep(0.8)
                raise RuntimeError("worker stuck")
        policy(torch.zeros(1, 1))  # a policy call is progress: the hooks feed the watchdog
        with sup.guard():
            for _ in range(4):
                time.sleep(0.1)
                policy(torch.zeros(1, 1))
        assert not sup.watchdog.fired
        sup.restart()
        assert built == [0, 1]
        with pytest.raises(faults.RunAborted, match="env.max_restarts=1") as info:
            sup.restart()
        assert "\n" not in str(info.value)
    finally:
        sup.close()


def test_nonfinite_guard_counts_streaks_and_finite_parameter_check() -> None:
    guard = faults.NonFiniteGuard(3)
    for ok in (False, False, True, False, False):
        guard(ok)
    assert (guard.streak, guard.total) == (2, 4)
    with pytest.raises(faults.RunAborted, match="3 non-finite"):
        guard(False)
    m = torch.nn.Linear(2, 2)
    faults.check_finite_parameters(m, 1)
    with torch.no_grad():
        m.weight[0, 0] = float("nan")
    with pytest.raises(faults.RunAborted, match="'weight' is non-finite after iteration 4"):
        faults.check_finite_parameters(m, 4)


def _nan_loss_after(monkeypatch: pytest.MonkeyPatch, good_calls: int, bad_calls: int | None) -> None:
    """Loss calls number good_calls+1 .. good_calls+bad_calls return NaN (bad_calls=None: forever)."""
    real = trainer.make_loss
    calls = {"n": 0}

    def make_loss(*args, **kwargs):
        module = real(*args, **kwargs)
        forward = module.forward

        def poisoned(td):
            out = forward(td)
            calls["n"] += 1
            n = calls["n"] - good_calls
            if n > 0 and (bad_calls is None or n <= bad_calls):
                out.set("loss_ript_cfg", out.get("loss_ript_cfg") * float("nan"))
            return out

        module.forward = poisoned
        return module

    monkeypatch.setattr(trainer, "make_loss", make_loss)


def test_transient_nonfinite_losses_are_skipped_and_logged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _nan_loss_after(monkeypatch, good_calls=1, bad_calls=2)
    out = tmp_path / "transient"
    res = ript_cfg.main([*TOY, f"logging.output_dir={out}", "train.iterations=2", "optim.max_consecutive_nonfinite=3"])
    assert res["stopped"] == "completed"
    skipped = [int(r["optim/skipped_nonfinite"]) for r in _rows(out)]
    assert sum(skipped) == 2 and skipped[0] >= 1


def test_persistent_nonfinite_stops_the_run_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "diverged"
    ript_cfg.main([*TOY, f"logging.output_dir={out}", "train.iterations=2"])  # two good iterations
    good = _params(out / "checkpoints" / "iter_000002")
    _nan_loss_after(monkeypatch, good_calls=0, bad_calls=None)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        ript_cfg.main([*TOY, f"logging.output_dir={out}", "train.iterations=6", "checkpoint.resume=auto", "optim.max_consecutive_nonfinite=3"])
    assert info.value.code == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "non-finite" in err[0] and "optim.max_consecutive_nonfinite=3" in err[0], err
    ckpts = sorted(p.name for p in (out / "checkpoints").glob("iter_*"))
    assert ckpts[-1] in ("iter_000002", "iter_000003")  # at most one iteration of skipped (unchanged) updates
    last = _params(out / "checkpoints" / ckpts[-1])
    assert all(torch.equal(good[k], last[k]) for k in good)  # skipped steps never touched the weights


def _signal_during_collect(monkeypatch: pytest.MonkeyPatch, iteration: int, sig: signal.Signals) -> None:
    """Send `sig` to this process in the middle of iteration `iteration`'s collection (after its first round)."""
    real = trainer.Trainer.collect

    def collect(self, it, preemption=None):
        if it + 1 == iteration:
            real_record = self.sampler.record

            def record(ctx, outs):
                real_record(ctx, outs)
                if preemption is not None and not preemption.requested:  # once: a second signal means "stop now"
                    os.kill(os.getpid(), sig)  # the handler only sets a flag: collection stops at the next round

            self.sampler.record = record
            try:
                return real(self, it, preemption)
            finally:
                del self.sampler.record
        return real(self, it, preemption)

    monkeypatch.setattr(trainer.Trainer, "collect", collect)


@pytest.mark.slow
def test_sigint_mid_iteration_checkpoints_and_resume_equals_an_uninterrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Curriculum sampler state and weights survive: preempted in iteration 2 + resumed == 3 iterations in one go."""
    common = [*TOY, "sampling.strategy=curriculum", "checkpoint.every=1", "algo.max_context_draws=6", "algo.target_groups=3", "optim.epochs=1"]
    one = ript_cfg.main([*common, f"logging.output_dir={tmp_path / 'one'}", "train.iterations=3"])
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN under nohup / a background shell
    _signal_during_collect(monkeypatch, 2, signal.SIGINT)
    cut = ript_cfg.main([*common, f"logging.output_dir={tmp_path / 'two'}", "train.iterations=3"])
    assert cut["iterations"] == 1 and "preempted by SIGINT during iteration 2" in cut["stopped"]
    assert cut["last_checkpoint"].name == "iter_000001"
    assert signal.getsignal(signal.SIGINT) is before  # the run's handler was removed, the caller's restored
    monkeypatch.undo()
    two = ript_cfg.main([*common, f"logging.output_dir={tmp_path / 'two'}", "train.iterations=3", "checkpoint.resume=auto"])
    assert two["iterations"] == 3
    a, b = _params(one["last_checkpoint"]), _params(two["last_checkpoint"])
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["iteration"] for r in _rows(tmp_path / "two")] == ["1", "2", "3"]


@pytest.mark.slow
def test_sigterm_to_a_real_run_exits_0_with_a_checkpoint_and_resume_finishes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "recipes" / "ript_cfg.py"), *TOY, f"logging.output_dir={out}", "checkpoint.every=1000", "train.iterations=400"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:  # wait until training is under way
        if (out / "metrics.csv").is_file() and len(_rows(out)) >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-2000:]
    assert "preempted by SIGTERM" in stdout
    ckpt = sorted((out / "checkpoints").glob("iter_*"))[-1]
    stopped_at = int(ckpt.name.split("_")[1])
    assert 3 <= stopped_at < 400 and (ckpt / "meta.json").is_file()
    assert not list((out / "checkpoints").glob(".tmp-*"))  # the atomic save left no partial directory
    res = subprocess.run([*cmd[:-1], f"train.iterations={stopped_at + 2}", "checkpoint.resume=auto"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = _rows(out)
    assert [int(r["iteration"]) for r in rows] == list(range(1, stopped_at + 3))
    assert (out / "checkpoints" / f"iter_{stopped_at + 2:06d}").is_dir()


@pytest.mark.slow
def test_curriculum_stops_drawing_mastered_contexts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every draw the recipe makes skips contexts whose last K rollouts all succeeded (while some remain open)."""
    from ript.algos.sampling import ContextSampler

    draws: list[tuple[set, list]] = []
    real = ContextSampler.sample

    def sample(self, n):
        mastered = {c for c in self.contexts if self.is_mastered(c)}
        got = real(self, n)
        draws.append((mastered, got, len(mastered) < len(self.contexts)))
        return got

    monkeypatch.setattr(ContextSampler, "sample", sample)
    out = tmp_path / "cur"
    # the toy config's tolerance makes most init states easy: some get mastered within a few iterations
    ript_cfg.main([*TOY, f"logging.output_dir={out}", "train.iterations=3", "optim.epochs=1", "sampling.strategy=curriculum",
                   "env.train_init_states=[0,1,2,3]", "algo.max_context_draws=4", "algo.target_groups=4"])
    assert any(m for m, _, _ in draws), "no context was ever mastered: the check would be vacuous"
    for mastered, got, some_open in draws:
        if some_open:
            assert not (set(got) & mastered), (mastered, got)
    assert max(int(r["sampling/mastered_contexts"]) for r in _rows(out)) >= 1


def test_an_env_fault_during_evaluation_leaves_the_policy_in_training_mode() -> None:
    from types import SimpleNamespace

    from ript.algos.evaluation import evaluate_contexts
    from ript.algos.group_collection import Context, GroupCollector

    class FailingEnv:
        batch_size = torch.Size([1])

        def clear_contexts(self) -> None:
            pass

        def push_contexts(self, queue, worker: int = 0) -> None:
            pass

    def batches():
        raise RuntimeError("env worker died")
        yield

    source = SimpleNamespace(env=FailingEnv(), collector=SimpleNamespace(reset=lambda: None), batches=batches())
    policy = torch.nn.Linear(1, 1)
    policy.train()
    with pytest.raises(RuntimeError, match="env worker died"):
        evaluate_contexts(GroupCollector(source, worker_options=[[0]], env_task_ids=[0]), policy, {Context(0, 100): 1}, group_id_base=5)
    assert policy.training  # an outer supervisor can restart the env and train on


class Killed(BaseException):
    """A kill that no handler sees (SIGKILL, the node lost): the process just stops."""


def test_a_kill_during_an_evaluation_keeps_that_iterations_update(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed while evaluating iteration 2 of 3: resume trains only iteration 3, and ends where an uninterrupted run ends."""
    common = [*TOY, "eval.every=1", "eval.episodes=4", "checkpoint.every=1", "train.iterations=3"]
    one = ript_cfg.main([*common, f"logging.output_dir={tmp_path / 'one'}"])
    real = trainer.Trainer.evaluate

    def evaluate(self, it, record_video):
        if it == 2:
            raise Killed
        return real(self, it, record_video)

    monkeypatch.setattr(trainer.Trainer, "evaluate", evaluate)
    with pytest.raises(Killed):
        ript_cfg.main([*common, f"logging.output_dir={tmp_path / 'two'}"])
    monkeypatch.undo()
    two = ript_cfg.main([*common, f"logging.output_dir={tmp_path / 'two'}", "checkpoint.resume=auto"])
    assert [r["iteration"] for r in _rows(tmp_path / "two")] == ["1", "3"]  # iteration 2's update was not redone
    a, b = _params(one["last_checkpoint"]), _params(two["last_checkpoint"])
    assert all(torch.equal(a[k], b[k]) for k in a)
