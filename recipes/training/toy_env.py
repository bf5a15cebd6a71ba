"""torchrl's ToyVLAEnv with LIBERO's context contract, for fast recipe tests.

`LiberoEnv` lets the recipe choose what the next reset starts from:
`push_contexts([{"init_state_id", "group_id", "task_id"}])`. `ContextToyVLAEnv`
keeps that contract on top of `torchrl.envs.custom.ToyVLAEnv` (tracking mode): the
per-episode target is a pure function of `init_state_id`, so "the same init state"
means the same task instance and K rollouts from one context form a real RIPT
group. The recipe therefore runs the same code for both envs, and a resumed toy
run reproduces an uninterrupted one exactly.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Iterable, Mapping

import torch
from tensordict import TensorDictBase
from torchrl.data import Unbounded
from torchrl.envs import Compose, EnvBase, ParallelEnv, SerialEnv, StepCounter, TransformedEnv
from torchrl.envs.custom import ToyVLAEnv
from torchrl.envs.transforms import MultiAction

_TARGET_SEED = 7919  # targets are drawn from Generator(seed = _TARGET_SEED * (init_state_id + 1))


class ContextToyVLAEnv(ToyVLAEnv):
    """Single ToyVLAEnv whose resets consume queued (init state, group) contexts."""

    def __init__(self, *, worker_index: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.worker_index = worker_index
        self._contexts: deque[dict[str, int]] = deque()
        self._fallback = 0
        self._current = {"task_id": 0, "init_state_id": 0, "group_id": -1}
        for key in ("task_id", "init_state_id", "group_id"):
            self.observation_spec[key] = Unbounded(shape=(), dtype=torch.int64, device=self.device)

    def push_contexts(self, contexts: Iterable[Mapping[str, int]], worker: int | None = None) -> int:
        """Queue contexts {"init_state_id", "group_id", "task_id"} for the next resets (FIFO)."""
        if worker is not None and int(worker) != self.worker_index:
            return len(self._contexts)
        for ctx in contexts:
            if "init_state_id" not in ctx:
                raise ValueError(f"context {dict(ctx)} needs 'init_state_id' (and optionally 'group_id', 'task_id')")
            self._contexts.append({"task_id": int(ctx.get("task_id", 0)), "init_state_id": int(ctx["init_state_id"]), "group_id": int(ctx.get("group_id", -1))})
        return len(self._contexts)

    def clear_contexts(self) -> int:
        """Drops queued contexts (a fault or stale groups); returns how many, to count them as lost."""
        n = len(self._contexts)
        self._contexts.clear()
        return n

    def pending_contexts(self) -> int:
        """Contexts still queued for later resets, so callers push only what is missing."""
        return len(self._contexts)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        if self._contexts:
            self._current = self._contexts.popleft()
        else:  # nothing queued: a throw-away episode that no group will ever claim
            self._fallback += 1
            self._current = {"task_id": 0, "init_state_id": 10_000 + self._fallback, "group_id": -1 - self._fallback - 1_000_000 * self.worker_index}
        self._rng.manual_seed(_TARGET_SEED * (self._current["init_state_id"] + 1))
        out = super()._reset(tensordict, **kwargs)
        for key, value in self._current.items():
            out.set(key, torch.tensor(value, dtype=torch.int64, device=self.device))
        return out

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        out = super()._step(tensordict)
        for key, value in self._current.items():
            out.set(key, torch.tensor(value, dtype=torch.int64, device=self.device))
        return out


def _make_one(index: int, *, n_action_steps: int, max_steps: int, action_dim: int, success_steps: int, success_tol: float) -> EnvBase:
    base = ContextToyVLAEnv(
        worker_index=index,
        action_dim=action_dim,
        state_dim=2 * action_dim,
        success_steps=success_steps,
        success_tol=success_tol,
        seed=index,
    )
    # one env step = one chunk of n_action_steps actions; episodes capped in decision steps
    return TransformedEnv(base, Compose(MultiAction(stack_rewards=False), StepCounter(max_steps=max_steps)))


def make_context_toy_env(
    num_envs: int,
    *,
    n_action_steps: int,
    max_steps: int,
    action_dim: int = 2,
    success_steps: int = 2,
    success_tol: float = 0.3,
    parallel: bool = False,
) -> EnvBase:
    """SerialEnv of `num_envs` ContextToyVLAEnv; `max_steps` counts decision steps (chunks).

    parallel=True runs each in its own process (ParallelEnv), like LIBERO's workers:
    what the worker-fault tests kill.
    """
    make = functools.partial(
        _make_one, n_action_steps=n_action_steps, max_steps=max_steps, action_dim=action_dim, success_steps=success_steps, success_tol=success_tol
    )
    fns = [functools.partial(make, i) for i in range(num_envs)]
    return ParallelEnv(num_envs, fns) if parallel else SerialEnv(num_envs, fns)


def behaviour_clone_toy(policy: torch.nn.Module, *, action_dim: int, chunk_size: int, steps: int, noise: float,
                        lr: float, batch: int, seed: int) -> None:
    """Warm start on the toy env: flow matching on noisy oracle chunks (state = [previous action, target]).

    The oracle's actions plus N(0, noise^2) teach roughly where the target is but not
    precisely enough to succeed often: a weak start that RL on its own rollouts can improve.
    """
    from tensordict import TensorDict

    g = torch.Generator().manual_seed(10_000 + seed)
    opt = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        target = torch.rand(batch, action_dim, generator=g) - 0.5
        prev = torch.rand(batch, action_dim, generator=g) * 2 - 1
        prev = torch.where(torch.rand(batch, 1, generator=g) < 0.3, torch.zeros_like(prev), prev)  # reset states echo zeros
        chunk = target[:, None, :] + noise * torch.randn(batch, chunk_size, action_dim, generator=g)
        td = TensorDict({("observation", "state"): torch.cat([prev, target], -1), "action_chunk": chunk.clamp(-1, 1)}, batch_size=[batch])
        loss = policy.per_sample_loss(td).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
