"""Which (task, init state) contexts to roll out next: uniform or curriculum.

RIPT spends rollouts where they teach something. A context whose most recent
group of K rollouts all succeeded is mastered and skipped (RIPT's rule: it
would be dropped by dynamic sampling anyway). With `strategy="balanced"`, each
cycle of T draws holds every task once, so a round splits evenly over tasks. With `strategy="curriculum"`,
tasks are also drawn with weight

    w_task = exp(-(s_task - target)^2 / (2 * width^2))

where s_task is the task's recent success rate (tasks never tried count as
exactly on target), so sampling favours tasks near `success_rate_target`
(default 0.7): hard enough to fail sometimes, easy enough to succeed sometimes.
Env-agnostic: a context is any hashable pair of ints.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict, deque
from collections.abc import Sequence
from typing import Any

Context = tuple[int, int]  # (task_id, init_state_id)


class ContextSampler:
    """Draws contexts and remembers how each one went, across iterations and resumes."""

    def __init__(
        self,
        contexts: Sequence[Context],
        strategy: str = "uniform",
        *,
        group_size: int = 8,
        success_rate_target: float = 0.7,
        width: float = 0.2,
        history: int = 32,
        seed: int = 0,
    ) -> None:
        if strategy not in ("uniform", "balanced", "curriculum"):
            raise ValueError(f"sampling.strategy={strategy!r} is unknown: use 'uniform', 'balanced' or 'curriculum'")
        if not contexts:
            raise ValueError("no contexts to sample from: configure at least one task with one init state")
        if not 0.0 <= success_rate_target <= 1.0:
            raise ValueError(f"sampling.success_rate_target={success_rate_target} must lie in [0, 1]")
        self.contexts = [tuple(map(int, c)) for c in contexts]
        self.strategy = strategy
        self.group_size = group_size
        self.target = success_rate_target
        self.width = width
        self.history = history
        self.rng = random.Random(seed)
        self.outcomes: dict[Context, deque[bool]] = defaultdict(lambda: deque(maxlen=self.history))

    # -- bookkeeping ---------------------------------------------------------------------------
    def record(self, context: Context, successes: Sequence[bool]) -> None:
        """Remember the outcomes of rollouts from `context` (oldest first)."""
        self.outcomes[tuple(map(int, context))].extend(bool(s) for s in successes)

    def is_mastered(self, context: Context) -> bool:
        """True if the last `group_size` rollouts from this context all succeeded."""
        recent = list(self.outcomes.get(tuple(context), ()))[-self.group_size :]
        return len(recent) >= self.group_size and all(recent)

    def task_success_rate(self, task_id: int) -> float | None:
        """Success rate over the task's recorded outcomes (None before any), which weighs its draws."""
        seen = [s for (t, _), outs in self.outcomes.items() if t == task_id for s in outs]
        return sum(seen) / len(seen) if seen else None

    # -- drawing -------------------------------------------------------------------------------
    def _task_weight(self, task_id: int) -> float:
        if self.strategy != "curriculum":
            return 1.0
        rate = self.task_success_rate(task_id)
        gap = 0.0 if rate is None else rate - self.target
        return math.exp(-(gap**2) / (2 * self.width**2))

    def sample(self, n: int) -> list[Context]:
        """Draw `n` contexts, skipping mastered ones (all contexts when every one is mastered)."""
        open_ctx = [c for c in self.contexts if not self.is_mastered(c)] or list(self.contexts)
        by_task: dict[int, list[Context]] = defaultdict(list)
        for c in open_ctx:
            by_task[c[0]].append(c)
        tasks = sorted(by_task)
        weights = [self._task_weight(t) for t in tasks]
        out = []
        order: list[int] = []
        for _ in range(n):
            if self.strategy == "balanced":  # every task once per cycle, in a fresh random order
                order = order or self.rng.sample(tasks, len(tasks))
                task = order.pop()
            else:
                task = self.rng.choices(tasks, weights=weights, k=1)[0]
            out.append(self.rng.choice(by_task[task]))
        return out

    # -- resume --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Outcomes and RNG, JSON-friendly, so a resumed run draws the same contexts."""
        return {
            "outcomes": {f"{t},{i}": list(v) for (t, i), v in self.outcomes.items()},
            "rng": self.rng.getstate(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what state_dict saved (lists back to the tuples random.setstate needs)."""
        self.outcomes.clear()
        for key, outs in state["outcomes"].items():
            t, i = (int(x) for x in key.split(","))
            self.outcomes[(t, i)].extend(bool(s) for s in outs)
        rng_state = state["rng"]
        self.rng.setstate((rng_state[0], tuple(rng_state[1]), rng_state[2]))
