"""Surviving what goes wrong mid-run: env workers that die or hang, non-finite updates.

Env faults. torchrl's ParallelEnv has no restart: a killed worker surfaces as a
BrokenPipeError / EOFError or a RuntimeError ("worker N dead", "At least one
process failed"), and a hung worker makes the parent spin until
`BATCHED_PIPE_TIMEOUT` (10000 s by default, and checked only every 65536 spins).
`EnvSupervisor` owns the env, its Collector and the batch iterator:

    sup = EnvSupervisor(build, policy=policy, step_timeout_s=120, max_restarts=5)
    try:
        with sup.guard():                # watchdog armed, failures classified
            ... push contexts, next(sup.batches) ...
    except EnvFault:
        sup.restart()                    # kill workers, close, rebuild (next seed offset)

The watchdog is a thread fed by forward hooks on the policy: while armed, if no
policy call has finished for `step_timeout_s` seconds (time spent inside the
policy does not count), it SIGKILLs the env's worker processes, which turns the
hang into a dead-worker error that torchrl notices within a fraction of a second.
The recipe discards the groups in flight and continues with fresh contexts.

Non-finite updates. `NonFiniteGuard` is the `step_callback` of
`ript.algos.update_policy`: it counts skipped (non-finite) steps in a row and
raises `RunAborted` at `max_consecutive`; `check_finite_parameters` refuses to
checkpoint a policy whose weights are no longer finite.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch


class EnvFault(RuntimeError):
    """An env worker died or hung; the message is one line."""


class RunAborted(RuntimeError):
    """The run cannot continue (repeated faults or divergence); one line naming the fix."""


# --------------------------------------------------------------------------- workers


def worker_processes(env: Any) -> list[Any]:
    """The multiprocessing workers behind `env` (through TransformedEnv wrappers); [] for in-process envs.

    Reads `__dict__` on purpose: attribute access on a closed ParallelEnv restarts it.
    """
    seen = 0
    while env is not None and seen < 16:
        workers = env.__dict__.get("_workers")
        if workers:
            return list(workers)
        env = env.__dict__.get("base_env") or env.__dict__.get("_modules", {}).get("base_env")
        seen += 1
    return []


def _alive(process: Any) -> bool:
    try:
        return process.is_alive()
    except ValueError:  # a closed Process object
        return False


def kill_workers(env: Any) -> int:
    """SIGKILL every live worker of `env` (also works on stopped/hung processes); returns how many."""
    n = 0
    for p in worker_processes(env):
        if _alive(p) and p.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
                n += 1
    for p in worker_processes(env):
        with contextlib.suppress(Exception):
            p.join(timeout=2.0)
    return n


def dead_workers(env: Any) -> list[int]:
    """Indices of workers that are no longer alive."""
    return [i for i, p in enumerate(worker_processes(env)) if not _alive(p)]


# --------------------------------------------------------------------------- watchdog


class Watchdog:
    """Calls `on_expire` once when armed and no progress was reported for `timeout_s` seconds."""

    def __init__(self, timeout_s: float, on_expire: Callable[[], None], poll_s: float = 0.1) -> None:
        self.timeout_s = float(timeout_s)
        self.on_expire = on_expire
        self.poll_s = poll_s
        self.fired = False
        self._armed = False
        self._busy = 0  # > 0 while the policy computes: that time is not an env hang
        self._last = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="env-watchdog", daemon=True)
        self._thread.start()

    def kick(self) -> None:
        """Progress was seen: restart the timeout from now."""
        self._last = time.monotonic()

    def enter_busy(self) -> None:
        """The policy computes now: slow inference must not read as a hung env."""
        with self._lock:
            self._busy += 1

    def exit_busy(self) -> None:
        """The policy is done; the env's time is watched again, from now."""
        with self._lock:
            self._busy = max(0, self._busy - 1)
        self.kick()

    @contextlib.contextmanager
    def armed(self) -> Iterator[None]:
        """Watch only while collecting: between rollouts (updates, evals) nothing can hang an env."""
        self.fired = False
        self._busy = 0
        self.kick()
        self._armed = True
        try:
            yield
        finally:
            self._armed = False

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            if self._armed and not self.fired and self._busy == 0 and time.monotonic() - self._last > self.timeout_s:
                self.fired = True
                with contextlib.suppress(Exception):
                    self.on_expire()

    def close(self) -> None:
        """Stops the polling thread, waiting at most a second so a stuck callback can't block exit."""
        self._stop.set()
        self._thread.join(timeout=1.0)


# --------------------------------------------------------------------------- supervisor

_FAULT_TYPES = (EOFError, BrokenPipeError, ConnectionError, TimeoutError)
_FAULT_WORDS = ("worker", "process failed", "time limit", "broken pipe", "dead")


class EnvSupervisor:
    """Owns env + collector + batch iterator; turns worker deaths and hangs into `EnvFault` and rebuilds.

    `build(attempt)` returns `(env, collector)`; attempt 0 is the first build, attempt k
    the k-th restart (use it to offset the worker seeds). `max_restarts` bounds restarts
    over the whole run: a fault that keeps coming back stops the run with `RunAborted`.
    """

    def __init__(
        self,
        build: Callable[[int], tuple[Any, Any]],
        *,
        policy: torch.nn.Module,
        step_timeout_s: float,
        max_restarts: int,
        log: Callable[[str], None] = print,
    ) -> None:
        self._build = build
        self.step_timeout_s = float(step_timeout_s)
        self.max_restarts = int(max_restarts)
        self.log = log
        self.restarts = 0
        self.faults = 0
        self._reported = 0
        self.env, self.collector = build(0)
        self.batches = iter(self.collector)
        self.watchdog = Watchdog(self.step_timeout_s, self._on_hang)
        self._hooks = [
            policy.register_forward_pre_hook(lambda *_: self.watchdog.enter_busy()),
            policy.register_forward_hook(lambda *_: self.watchdog.exit_busy()),
        ]

    def _on_hang(self) -> None:
        n = kill_workers(self.env)
        self.log(f"env watchdog: no env progress for {self.step_timeout_s:g}s (env.step_timeout_s): killed {n} worker(s)")

    def is_fault(self, err: BaseException) -> bool:
        """A worker death/hang (restartable), as opposed to a bug that must surface."""
        if self.watchdog.fired or dead_workers(self.env):
            return True
        if isinstance(err, _FAULT_TYPES):
            return bool(worker_processes(self.env))
        msg = str(err).lower()
        return bool(worker_processes(self.env)) and isinstance(err, RuntimeError) and any(w in msg for w in _FAULT_WORDS)

    @contextlib.contextmanager
    def guard(self, what: str = "rollout") -> Iterator[None]:
        """Run env work under the watchdog; a worker fault leaves as `EnvFault` (one line)."""
        try:
            with self.watchdog.armed():
                yield
        except Exception as err:
            if not self.is_fault(err):
                raise
            self.faults += 1
            cause = "hung (no progress within env.step_timeout_s)" if self.watchdog.fired else "died"
            dead = dead_workers(self.env)
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
            raise EnvFault(f"env worker(s) {dead or '?'} {cause} during {what}: {type(err).__name__}: {first}") from err

    def restart(self) -> None:
        """Tear the broken env down (kill, shutdown, close) and build a fresh one; `RunAborted` past max_restarts."""
        self.restarts += 1
        kill_workers(self.env)
        for close in (self.collector.shutdown, lambda: self.env.close(raise_if_closed=False)):
            with contextlib.suppress(Exception):
                close()
        if self.restarts > self.max_restarts:
            raise RunAborted(
                f"env workers failed {self.restarts} times (env.max_restarts={self.max_restarts}): "
                "check the simulator (logs above), or raise env.max_restarts / env.step_timeout_s"
            )
        self.env, self.collector = self._build(self.restarts)
        self.batches = iter(self.collector)

    def metrics(self) -> dict[str, float]:
        """Faults since the last call (one iteration's) and restarts so far in this process."""
        new, self._reported = self.faults - self._reported, self.faults
        return {"faults/env_faults": new, "faults/env_restarts": self.restarts}

    def close(self) -> None:
        """Best-effort teardown: a broken collector or env must not hide the run's own error."""
        for h in self._hooks:
            h.remove()
        self.watchdog.close()
        for close in (self.collector.shutdown, lambda: self.env.close(raise_if_closed=False)):
            with contextlib.suppress(Exception):
                close()


# --------------------------------------------------------------------------- non-finite updates


class NonFiniteGuard:
    """Counts non-finite (skipped) update steps in a row across iterations; aborts at `max_consecutive`."""

    def __init__(self, max_consecutive: int) -> None:
        self.max_consecutive = int(max_consecutive)
        self.streak = 0
        self.total = 0

    def __call__(self, finite: bool) -> None:
        if finite:
            self.streak = 0
            return
        self.streak += 1
        self.total += 1
        if self.streak >= self.max_consecutive:
            raise RunAborted(
                f"{self.streak} non-finite losses/gradients in a row (optim.max_consecutive_nonfinite={self.max_consecutive}): "
                "lower optim.lr, keep optim.max_grad_norm finite or check the data; the last good checkpoint is kept"
            )

    def state_dict(self) -> dict[str, int]:
        """The streak survives a resume, so repeated crash-resume cycles still abort."""
        return {"streak": self.streak, "total": self.total}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restores state_dict's counters (zero for checkpoints saved without them)."""
        self.streak, self.total = int(state.get("streak", 0)), int(state.get("total", 0))


def check_finite_parameters(module: torch.nn.Module, iteration: int) -> None:
    """Refuse to checkpoint a policy with NaN/inf weights (the last good checkpoint stays the latest)."""
    for name, p in module.named_parameters():
        if not torch.isfinite(p.detach()).all():
            raise RunAborted(
                f"policy parameter '{name}' is non-finite after iteration {iteration}: not saved; "
                "lower optim.lr and resume from the last good checkpoint (checkpoint.resume=auto)"
            )
