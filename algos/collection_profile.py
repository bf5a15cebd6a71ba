"""Where rollout collection spends its time, seen from the collecting process and from each env worker.

A collector loop alternates between the env workers (physics and rendering, in their own
processes) and the collecting process (transforms on the observations, the policy). The
profile times the batched env's `_step`/`_reset`, the transforms and the policy's `forward`
in this process, and asks the workers for their own clocks (`collection_seconds`, which
`ript.envs.LiberoEnv` provides). What the env calls took beyond the workers' busy time is
inter-process transfer and waiting for the slowest worker.

    with CollectionProfile(env, policy, worker_clocks=True) as profile:
        ... collect ...
    profile.breakdown(wall_seconds)   # {"physics": s, "render": s, ..., "sim_steps": n}
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from torch import nn
from torchrl.envs import EnvBase, TransformedEnv
from torchrl.envs.batched_envs import BatchedEnvBase

#: the breakdown's parts, in the order they happen in one decision step; they sum to the collection's wall time
PARTS = ("physics", "render", "worker_other", "transfer_wait", "transforms", "policy_preprocess", "policy_denoise", "policy_other",
         "collector")


class CollectionProfile:
    """Times one stretch of collection; a context manager that removes its timers on exit."""

    def __init__(self, env: EnvBase, policy: nn.Module, *, worker_clocks: bool) -> None:
        self.env, self.policy, self.worker_clocks = env, policy, worker_clocks
        self.seconds: dict[str, float] = defaultdict(float)
        self.workers: list[dict[str, float]] = []
        self._undo: list[tuple[Any, str]] = []
        self._policy_start: dict[str, float] = {}

    def __enter__(self) -> CollectionProfile:
        base = self.env.base_env if isinstance(self.env, TransformedEnv) else self.env
        for name in ("_step", "_reset"):
            self._time(base, name, "env")
        if isinstance(self.env, TransformedEnv):
            for name in ("_step", "_reset", "inv"):
                self._time(self.env.transform, name, "transforms")
        self._time(self.policy, "forward", "policy")
        self._policy_start = dict(getattr(self.policy, "phase_seconds", {}))
        if self.worker_clocks:
            self.env.collection_seconds(clear=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        for obj, name in reversed(self._undo):
            object.__delattr__(obj, name)  # the class's method shows through again
        self._undo.clear()
        base = self.env.base_env if isinstance(self.env, TransformedEnv) else self.env
        rebuilt = isinstance(base, BatchedEnvBase) and base.is_closed  # workers gone (a fault): their clocks went with them
        if self.worker_clocks and exc[0] is None and not rebuilt:
            clocks = self.env.collection_seconds(clear=True)
            self.workers = clocks if isinstance(clocks, list) else [clocks]

    def _time(self, obj: Any, name: str, bucket: str) -> None:
        """Shadow obj.name with a timed call (an instance attribute, removed on exit)."""
        method: Callable[..., Any] = getattr(obj, name)
        seconds = self.seconds

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                seconds[bucket] += time.perf_counter() - start

        object.__setattr__(obj, name, timed)
        self._undo.append((obj, name))

    def breakdown(self, wall_s: float) -> dict[str, float]:
        """Seconds per part of `wall_s` (the collection's wall time; PARTS sum to it) and the simulator steps run.

        Worker parts are the mean over workers (they run side by side); without worker clocks the
        env's whole time is `transfer_wait`. `policy_preprocess`/`policy_denoise` need a policy that
        keeps `phase_seconds` (PI0Actor); otherwise the policy's time is all `policy_other`.
        """
        s, n = self.seconds, max(len(self.workers), 1)
        mean = {k: sum(w[k] for w in self.workers) / n for k in ("physics", "render", "worker_other")}
        phases = getattr(self.policy, "phase_seconds", {})
        pre, den = (phases.get(k, 0.0) - self._policy_start.get(k, 0.0) for k in ("preprocess", "denoise"))
        out = {**mean, "transfer_wait": max(s["env"] - sum(mean.values()), 0.0), "transforms": s["transforms"],
               "policy_preprocess": pre, "policy_denoise": den, "policy_other": max(s["policy"] - pre - den, 0.0)}
        out["collector"] = max(wall_s - s["env"] - s["transforms"] - s["policy"], 0.0)
        out["sim_steps"] = sum(w["sim_steps"] for w in self.workers)
        return out
