"""A small flow-matching MLP policy over a flat observation, with an optional CFG head.

Why it exists: fast tests, the toy learning check (`benchmarks/learning_toy.py`)
and a baseline users can train in seconds. It follows the same conventions as
PI0 (see `algos/policy.py`), so `RIPTCFGLoss`, the collector and the recipes
treat both policies alike:

    x_t = t * noise + (1 - t) * actions,  target velocity u = noise - actions,
    sampling: Euler from t = 1 (pure noise) to t = 0 (actions).

CFG (CFGRL): the optimality label (0 = unconditional, 1 = positive,
2 = negative) is embedded and added to the hidden state. The unconditional
embedding is fixed at zero and the label embeddings start at zero, so an
untrained (or behaviour-cloned, unconditional) policy gives the same velocity
for every label: guidance is the identity until RL teaches the labels apart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torch import nn

from .policy import POSITIVE, UNCONDITIONAL, FlowMatchingPolicy, sample_flow_time


def _time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of the flow time t in [0, 1], shape [B, dim]."""
    half = dim // 2
    freqs = torch.exp(torch.linspace(0.0, math.log(1000.0), half, device=t.device, dtype=t.dtype))
    angles = t[:, None] * freqs[None, :] * math.pi
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class FlowMatchingMLPPolicy(FlowMatchingPolicy):
    """Flow-matching MLP: (flat observation, x_t, t, optimality label) -> velocity of the chunk.

    Args:
        obs_dim: width of the concatenated observation entries.
        action_dim: width of one action.
        chunk_size: actions predicted per call.
        n_action_steps: actions executed before replanning (the written "action").
        obs_keys: entries read from the tensordict and concatenated (flattened
            past the batch dims), e.g. `[("observation", "state")]`.
        hidden: hidden width; depth: number of hidden layers.
        num_steps: Euler integration steps at sampling.
        supports_cfg: add the optimality-label embedding (needed by `RIPTCFGLoss(mode="cfg")`).
        default_guidance: CFG weight used when `sample_actions(guidance=None)`;
            None samples unconditionally. Recipes set it after CFG training.
        action_low / action_high: optional clamp applied to sampled chunks.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        chunk_size: int,
        n_action_steps: int | None = None,
        *,
        obs_keys: Sequence[NestedKey] = (("observation", "state"),),
        hidden: int = 128,
        depth: int = 3,
        num_steps: int = 10,
        supports_cfg: bool = True,
        default_guidance: float | None = None,
        action_low: float | None = None,
        action_high: float | None = None,
    ) -> None:
        super().__init__()
        if obs_dim < 1 or action_dim < 1 or chunk_size < 1:
            raise ValueError(f"obs_dim, action_dim and chunk_size must be >= 1, got {obs_dim}, {action_dim}, {chunk_size}.")
        n_action_steps = chunk_size if n_action_steps is None else n_action_steps
        if not 1 <= n_action_steps <= chunk_size:
            raise ValueError(f"n_action_steps must be in [1, chunk_size={chunk_size}], got {n_action_steps}.")
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
        if not obs_keys:
            raise ValueError("obs_keys must name at least one observation entry, e.g. [('observation', 'state')].")
        self.obs_dim = int(obs_dim)
        self.action_dim = int(action_dim)
        self.action_dim_loss = int(action_dim)
        self.chunk_size = int(chunk_size)
        self.n_action_steps = int(n_action_steps)
        self.obs_keys = [k if isinstance(k, str) else tuple(k) for k in obs_keys]
        self.in_keys = list(self.obs_keys)  # what collectors see this policy read
        self.num_steps = int(num_steps)
        self.supports_cfg = bool(supports_cfg)
        self.default_guidance = default_guidance
        self.action_low = action_low
        self.action_high = action_high
        self.time_dim = 32
        flat_action = self.chunk_size * self.action_dim
        self.obs_proj = nn.Linear(self.obs_dim, hidden)
        self.in_proj = nn.Linear(flat_action + self.time_dim, hidden)
        # label 0 (unconditional) is the padding row: fixed at zero, no gradient.
        self.label_embed = nn.Embedding(3, hidden, padding_idx=UNCONDITIONAL) if self.supports_cfg else None
        if self.label_embed is not None:
            nn.init.zeros_(self.label_embed.weight)
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.SiLU(), nn.Linear(hidden, hidden)]
        self.trunk = nn.Sequential(*layers)
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, flat_action))

    # -- helpers -----------------------------------------------------------
    def _obs(self, td: TensorDictBase) -> torch.Tensor:
        parts = []
        for key in self.obs_keys:
            value = td.get(key, None)
            if value is None:
                raise KeyError(f"FlowMatchingMLPPolicy: observation entry {key!r} is missing; pass obs_keys that exist in the tensordict.")
            parts.append(value.reshape(*td.batch_size, -1).float())
        obs = torch.cat(parts, dim=-1).reshape(-1, sum(p.shape[-1] for p in parts))
        if obs.shape[-1] != self.obs_dim:
            raise ValueError(f"FlowMatchingMLPPolicy: observation width {obs.shape[-1]} != obs_dim {self.obs_dim}; set obs_dim to match obs_keys.")
        return obs

    def velocity(self, obs: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        """Velocity field v(x_t, t | obs, label), shape [B, chunk, action_dim]."""
        b = x_t.shape[0]
        h = self.obs_proj(obs) + self.in_proj(torch.cat([x_t.reshape(b, -1), _time_embedding(t, self.time_dim)], dim=-1))
        if label is not None:
            if self.label_embed is None:
                raise ValueError("this FlowMatchingMLPPolicy has no CFG head; build it with supports_cfg=True to pass optimality labels.")
            h = h + self.label_embed(label)
        return self.out(self.trunk(h)).reshape(b, self.chunk_size, self.action_dim)

    # -- FlowMatchingPolicy ------------------------------------------------
    def sample_actions(self, td: TensorDictBase, *, noise: torch.Tensor | None = None, guidance: float | None = None,
                       num_steps: int | None = None) -> torch.Tensor:
        """Euler-integrate from noise (t=1) to actions (t=0); CFG guidance v_u + w (v_pos - v_u)."""
        obs = self._obs(td)
        b = obs.shape[0]
        shape = (b, self.chunk_size, self.action_dim)
        if noise is None:
            x = torch.randn(shape, device=obs.device, dtype=obs.dtype)
        else:
            if noise.numel() != b * self.chunk_size * self.action_dim:
                raise ValueError(f"noise must have {shape} elements (batch, chunk, action_dim), got shape {tuple(noise.shape)}.")
            x = noise.reshape(shape).to(obs)
        if guidance is None:
            guidance = self.default_guidance
        if guidance is not None and self.label_embed is None:
            raise ValueError("guidance needs a CFG head: build FlowMatchingMLPPolicy with supports_cfg=True.")
        uncond = torch.full((b,), UNCONDITIONAL, dtype=torch.long, device=obs.device)
        pos = torch.full((b,), POSITIVE, dtype=torch.long, device=obs.device)
        steps = num_steps or self.num_steps
        dt = -1.0 / steps
        for i in range(steps):
            t = torch.full((b,), 1.0 - i / steps, device=obs.device, dtype=obs.dtype)
            if guidance is None:
                v = self.velocity(obs, x, t)
            elif guidance == 0.0:
                v = self.velocity(obs, x, t, uncond)
            else:
                # one batched call for both branches
                v_both = self.velocity(torch.cat([obs, obs]), torch.cat([x, x]), torch.cat([t, t]), torch.cat([uncond, pos]))
                v_u, v_p = v_both[:b], v_both[b:]
                v = v_u + guidance * (v_p - v_u)
            x = x + dt * v
        if self.action_low is not None or self.action_high is not None:
            x = x.clamp(self.action_low, self.action_high)
        return x.reshape(*td.batch_size, self.chunk_size, self.action_dim)

    def per_sample_loss(
        self,
        td: TensorDictBase,
        *,
        noise: torch.Tensor | None = None,
        time: torch.Tensor | None = None,
        optimality: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Masked flow-matching MSE per sample, shape [B] (see FlowMatchingPolicy)."""
        if td.batch_dims != 1:
            raise ValueError(f"per_sample_loss expects a flat batch [B], got batch_size {tuple(td.batch_size)}; reshape(-1) it first.")
        obs = self._obs(td)
        actions = td.get("action_chunk", None)
        if actions is None:
            raise KeyError("per_sample_loss needs 'action_chunk' [B, chunk, action_dim] in the tensordict.")
        if actions.shape[1:] != (self.chunk_size, self.action_dim):
            raise ValueError(f"action_chunk has shape {tuple(actions.shape)}, expected [B, {self.chunk_size}, {self.action_dim}].")
        actions = actions.to(obs)
        b = actions.shape[0]
        noise = torch.randn_like(actions) if noise is None else noise.to(actions)
        time = sample_flow_time(b, actions.device) if time is None else time.to(actions)
        t = time.reshape(b, 1, 1)
        x_t = t * noise + (1 - t) * actions
        if optimality is not None:
            optimality = optimality.reshape(b).long()
        v = self.velocity(obs, x_t, time.reshape(b), optimality)
        err = (v - (noise - actions)).pow(2)[..., : self.action_dim_loss].mean(-1)  # [B, chunk]
        mask = td.get("action_mask", None)
        if mask is None:
            return err.mean(-1)
        mask = mask.reshape(b, self.chunk_size).to(err.dtype)
        return (err * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)
