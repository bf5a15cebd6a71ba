"""RIPT-CFG loss: advantage-conditioned flow matching for any `FlowMatchingPolicy`.

Flow-matching policies have no tractable log-likelihood, so PPO's ratio is not
available. RIPT-CFG trains with the policy's own per-sample flow-matching loss
l_i (a variational bound on -log pi(a_i | o_i)) on the policy's own rollouts,
and lets the advantage decide how each sample counts. Two modes:

`weighted` (advantage-weighted regression, AWR / RWR):

    A_n  = A / (std_batch(A) + eps)          if normalize_advantage else A
    w~_i = exp(A_n,i / temperature)
    w_i  = min(w~_i / mean_batch(w~), w_max)   (weights detached)
    L    = mean_i w_i * l_i

Minimising it fits the policy to pi_old(a|o) * exp(A/T), the closed-form
solution of KL-regularised policy improvement. The weights are positive and
bounded, and l_i >= 0, so the objective is bounded below by 0: a negative
advantage never turns into "maximise the flow-matching loss" (unbounded, and
it would wreck the velocity field). Failures still lose probability mass: their
weight falls below the batch mean, so successes (weight above it) take their
share. With leave-one-out advantages (zero mean per group) the self-normalised
weights keep the step size of behaviour cloning; the temperature sets how
sharply successes are preferred, w_max caps any single sample's influence.

`cfg` (CFGRL, Frans et al. 2025): each sample gets the optimality label
POSITIVE if A > 0 else NEGATIVE, replaced by UNCONDITIONAL with probability
`p_uncond`; L = mean_i l_i(label_i) (unweighted). The policy then samples with
v = v_uncond + w * (v_pos - v_uncond) (the policy's `guidance`).

The policy is stored as a submodule and called, never made functional, so DDP
can wrap the policy (or this module) and its hooks run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.utils import NestedKey
from torchrl.objectives import LossModule

from .policy import NEGATIVE, POSITIVE, UNCONDITIONAL, FlowMatchingPolicy

MODES = ("weighted", "cfg")


class RIPTCFGLoss(LossModule):
    """RIPT-CFG LossModule (see the module docstring for both modes' formulas).

    Args:
        policy: any `FlowMatchingPolicy`; `mode="cfg"` needs `policy.supports_cfg`.
        mode: "weighted" or "cfg".
        temperature: T in w = exp(A_n / T) (weighted mode).
        w_max: upper clip of the self-normalised weight (weighted mode).
        normalize_advantage: divide advantages by their batch std first (weighted mode).
        p_uncond: probability of dropping a label to UNCONDITIONAL (cfg mode).

    Input keys (change with `set_keys`): advantage [B, 1] or [B], action_chunk
    [B, chunk, dim], action_mask [B, chunk] (optional), plus the policy's
    observation entries. Output: "loss_ript_cfg" and detached diagnostics
    (fm_loss_mean, weight_mean/min/max, frac_positive, frac_unconditional).
    """

    @dataclass
    class _AcceptedKeys:
        """Configurable tensordict keys.

        Attributes:
            advantage: per-sample advantage, [B] or [B, 1].
            action_chunk: stored chunk the policy produced, [B, chunk, action_dim].
            action_mask: optional [B, chunk] bool of executed/valid steps.
        """

        advantage: NestedKey = "advantage"
        action_chunk: NestedKey = "action_chunk"
        action_mask: NestedKey = "action_mask"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys

    def __init__(
        self,
        policy: FlowMatchingPolicy,
        *,
        mode: str = "weighted",
        temperature: float = 1.0,
        w_max: float = 20.0,
        normalize_advantage: bool = True,
        p_uncond: float = 0.1,
    ) -> None:
        super().__init__()
        if not isinstance(policy, FlowMatchingPolicy):
            raise TypeError(f"policy must subclass ript.algos.FlowMatchingPolicy, got {type(policy).__name__}.")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
        if mode == "cfg" and not policy.supports_cfg:
            raise ValueError(f"mode='cfg' needs a policy with a CFG head; {type(policy).__name__} has supports_cfg=False (use mode='weighted' or enable CFG).")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        if w_max < 1:
            raise ValueError(f"w_max must be >= 1 (the mean self-normalised weight is 1), got {w_max}.")
        if not 0.0 <= p_uncond <= 1.0:
            raise ValueError(f"p_uncond must be in [0, 1], got {p_uncond}.")
        self.policy = policy
        self.mode = mode
        self.temperature = float(temperature)
        self.w_max = float(w_max)
        self.normalize_advantage = normalize_advantage
        self.p_uncond = float(p_uncond)

    @property
    def functional(self) -> bool:
        """The policy is called as a stateful module (DDP-friendly), never through functional params."""
        return False

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        """No value estimator: nothing to forward."""

    def advantage_weights(self, advantage: torch.Tensor) -> torch.Tensor:
        """Detached AWR weights [B] for `weighted` mode (formula in the module docstring)."""
        adv = advantage.detach().float()
        if self.normalize_advantage and adv.numel() > 1:
            adv = adv / (adv.std() + 1e-6)
        raw = torch.exp((adv / self.temperature).clamp(min=-50.0, max=50.0))  # min: all-equal negative advantages gave 0/0
        return (raw / raw.mean()).clamp(max=self.w_max)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        keys = self.tensor_keys
        if tensordict.batch_dims != 1:
            tensordict = tensordict.reshape(-1)
        advantage = tensordict.get(keys.advantage, None)
        if advantage is None:
            raise KeyError(f"RIPTCFGLoss: advantage entry {keys.advantage!r} is missing; run the GroupLOOAdvantage transform first or set_keys(advantage=...).")
        chunk = tensordict.get(keys.action_chunk, None)
        if chunk is None:
            raise KeyError(f"RIPTCFGLoss: action chunk entry {keys.action_chunk!r} is missing; store the policy's chunk or set_keys(action_chunk=...).")
        advantage = advantage.reshape(tensordict.shape[0])
        if not torch.isfinite(advantage).all():
            raise ValueError("RIPTCFGLoss: advantages contain NaN or inf; check the rewards/success signal fed to the advantage transform.")
        # the policy reads its fixed entry names: map the configured keys onto them (shallow)
        policy_td = tensordict.copy()
        policy_td.set("action_chunk", chunk)
        mask = tensordict.get(keys.action_mask, None)
        if mask is not None:
            policy_td.set("action_mask", mask)
        elif "action_mask" in policy_td.keys():
            policy_td.del_("action_mask")

        positive = advantage > 0
        if self.mode == "weighted":
            per_sample = self.policy.per_sample_loss(policy_td)
            weights = self.advantage_weights(advantage).to(per_sample)
            loss = (weights * per_sample).mean()
            frac_uncond = torch.zeros(())
        else:
            labels = torch.where(positive, POSITIVE, NEGATIVE).long()
            drop = torch.rand(labels.shape, device=labels.device) < self.p_uncond
            labels = torch.where(drop, torch.full_like(labels, UNCONDITIONAL), labels)
            per_sample = self.policy.per_sample_loss(policy_td, optimality=labels)
            weights = torch.ones_like(per_sample)
            loss = per_sample.mean()
            frac_uncond = drop.float().mean()
        return TensorDict(
            {
                "loss_ript_cfg": loss,
                "fm_loss_mean": per_sample.detach().mean(),
                "weight_mean": weights.detach().mean(),
                "weight_min": weights.detach().min(),
                "weight_max": weights.detach().max(),
                "frac_positive": positive.float().mean(),
                "frac_unconditional": frac_uncond,
            },
            batch_size=[],
        )
