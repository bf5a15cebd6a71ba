"""Optimizer, LR schedule, weight averaging, mixed precision and early stopping, built from the config.

Schedules are per optimizer step: linear warm-up to `lr` over `warmup_steps`, then
constant, cosine down to `min_lr_ratio * lr` at `total_steps`, or "wsd" (warm-up,
stable, decay): constant, then linear down to `min_lr_ratio * lr` over the last
`decay_steps`, so a run equals the constant one until its decay starts. AMP: bf16 autocast
on CUDA or CPU (no scaler needed), fp16 autocast + GradScaler on CUDA only.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from typing import Any

import torch

from .config import ConfigError


def make_optimizer(params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float, betas: list[float]) -> torch.optim.AdamW:
    """AdamW over the trainable parameters."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ConfigError("the policy has no trainable parameters: check the policy's freezing options")
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(betas[0], betas[1]))


def lr_factor(step: int, *, schedule: str, warmup_steps: int, total_steps: int, min_lr_ratio: float, decay_steps: int = 0) -> float:
    """Multiplier of the base LR at optimizer step `step` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "wsd":
        left = total_steps - step  # steps still to take, this one included
        if decay_steps <= 0 or left > decay_steps:
            return 1.0
        return min_lr_ratio + (1 - min_lr_ratio) * max(left, 0) / decay_steps
    raise ConfigError(f"optim.schedule={schedule!r} is unknown: use constant, cosine or wsd")


def make_scheduler(optimizer: torch.optim.Optimizer, *, schedule: str, warmup_steps: int, total_steps: int,
                   min_lr_ratio: float, decay_steps: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR whose state (last_epoch) checkpoints and resumes exactly."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_factor(s, schedule=schedule, warmup_steps=warmup_steps, total_steps=total_steps,
                            min_lr_ratio=min_lr_ratio, decay_steps=decay_steps),
    )


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None when mixed precision is off.

    bf16 autocasts on CUDA and on CPU alike (a bf16 PI0 checkpoint trains on a CPU too); fp16 only
    on CUDA, where its GradScaler works (validation refuses amp=fp16 with train.device=cpu).
    """
    if amp == "off" or (amp == "fp16" and device.type != "cuda"):
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def make_grad_scaler(amp: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 on CUDA (bf16 has fp32's range and needs none)."""
    if amp == "fp16" and device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None


class EarlyStopping:
    """Stop when the evaluation success rate has not improved by `min_delta` for `patience` evaluations."""

    def __init__(self, patience: int = 0, min_delta: float = 0.0) -> None:
        self.patience = patience
        self.min_delta = min_delta
        self.best: float | None = None
        self.bad_evals = 0

    def update(self, value: float) -> bool:
        """Record one evaluation; returns True if it is a new best."""
        if self.best is None or value > self.best + self.min_delta:
            self.best = value
            self.bad_evals = 0
            return True
        self.bad_evals += 1
        return False

    @property
    def should_stop(self) -> bool:
        """`patience` evals in a row without a new best (never when patience is 0)."""
        return self.patience > 0 and self.bad_evals >= self.patience

    def state_dict(self) -> dict[str, Any]:
        """Best value and bad-eval count, so patience carries over a resume."""
        return {"best": self.best, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what state_dict saved."""
        self.best, self.bad_evals = state["best"], state["bad_evals"]


class WeightEMA:
    """Exponential moving average of a model's parameters: a smoother copy to evaluate and ship.

    Why: a behaviour-cloned policy's per-task success swings between nearby training steps
    (the tiny PI0's libero_spatial: 0.10, 0.58, 0.30 at steps 1000, 1500, 1750), so a raw
    snapshot can sit on a lucky high point that any later update regresses from. The
    average follows the trend instead. The decay warms up as min(decay, (1 + n) / (10 + n))
    after n updates, so the random initial weights do not linger in it.

    `average`: an existing module of the same shape to hold the average (e.g. the policy that acts
    in the envs while a copy trains), instead of a fresh copy of `model`; it starts from its own
    weights. `warmup=False` uses `decay` from the first update: for a fine-tune whose start weights
    are already good and should weigh in fully.
    """

    def __init__(self, model: torch.nn.Module, decay: float, *, average: torch.nn.Module | None = None,
                 warmup: bool = True) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = warmup
        self.updates = 0
        self.model = copy.deepcopy(model).eval() if average is None else average
        self.model.requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next update uses (warm-up included)."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Move the average towards `model`'s current parameters (buffers are copied: they hold constants)."""
        decay = self.current_decay()
        for avg, new in zip(self.model.parameters(), model.parameters(), strict=True):
            avg.lerp_(new.detach(), 1.0 - decay)
        for avg, new in zip(self.model.buffers(), model.buffers(), strict=True):
            avg.copy_(new)
        self.updates += 1
