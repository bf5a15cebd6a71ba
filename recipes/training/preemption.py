"""Turn SIGTERM / SIGINT into a graceful stop: finish the current step, checkpoint, exit 0.

Schedulers (SLURM, Kubernetes, spot instances) send SIGTERM before killing a job.
The handler only sets a flag; the recipe polls `requested` at safe points (between
rollouts, between minibatches, at the end of an iteration), writes a checkpoint
atomically and exits with status 0, so `resume=auto` continues the run. A second
signal while stopping restores the default behaviour (a user pressing Ctrl-C twice
really wants out).
"""

from __future__ import annotations

import signal
import types
from collections.abc import Iterable


class PreemptionRequested(Exception):
    """Raised from a safe point to unwind to the recipe's checkpoint-and-exit path."""


class PreemptionHandler:
    """Installs handlers for the given signals; use as a context manager to restore the old ones."""

    def __init__(self, signals: Iterable[signal.Signals] = (signal.SIGTERM, signal.SIGINT)) -> None:
        self.signals = tuple(signals)
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, object] = {}

    @property
    def requested(self) -> bool:
        """A signal arrived: the loop checkpoints and exits at its next safe point."""
        return self.received is not None

    def check(self) -> None:
        """Raise `PreemptionRequested` if a signal arrived (call at safe points)."""
        if self.received is not None:
            raise PreemptionRequested(f"received {self.received.name}")

    def _handle(self, signum: int, frame: types.FrameType | None) -> None:
        if self.received is not None:  # second signal: stop being graceful
            self.restore()
            signal.raise_signal(signum)
            return
        self.received = signal.Signals(signum)

    def install(self) -> "PreemptionHandler":
        """Catches the signals, keeping the previous handlers for restore; returns self."""
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        """Puts the previous handlers back, so a second signal (or one after the run) acts as usual."""
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)
        self._previous.clear()

    def __enter__(self) -> "PreemptionHandler":
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.restore()
