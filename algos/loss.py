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

`positive_only` (weighted mode; filtered self-imitation): only samples with A > 0
enter the advantage term, and the weights are self-normalised over them; failures
get weight 0. Why: a failed episode runs to the horizon while a success ends early,
so failures are most of a batch's steps and, with positive weights, keep a large
share of the loss even at a low temperature: the update imitates them. Measured on
LIBERO (tiny PI0, held-out libero_spatial): six updates on expert steps alone kept
success at 0.60 (start 0.58); the same updates with the policy's own failed steps
beside the expert steps took it to 0.24. With failures out (and demos replayed,
lr 1e-5) a 36-minute LIBERO run raised the mean success by 0.10
(benchmarks/results/learning_libero_runs.md).

`cfg` (CFGRL, Frans et al. 2025): each sample gets the optimality label
POSITIVE if A > 0 else NEGATIVE, replaced by UNCONDITIONAL with probability
`p_uncond`; L = mean_i l_i(label_i) (unweighted). The policy then samples with
v = v_uncond + w * (v_pos - v_uncond) (the policy's `guidance`).

The policy is stored as a submodule and called, never made functional, so DDP
can wrap the policy (or this module) and its hooks run.

Data parallel (`sync_across_ranks=True`, for a DDP-wrapped loss): the batch
statistics above (count, std of A, mean of w~) are all-reduced over the
process group, so every rank weights its samples exactly as one process
holding the whole global minibatch would, and each rank's loss is scaled by
world_size / N_global so that DDP's gradient average is the gradient of the
global mean. An optional per-sample mask (key "sample_mask") takes padding
samples out of the statistics and the loss. An optional per-sample "informative"
flag (GroupLOOAdvantage writes it) limits the advantage term to steps of groups
with mixed outcomes, while the reference anchor covers every valid step: with
uniform groups kept (drop_uninformative=False) the anchor also holds the policy
on states whose groups all failed or all succeeded, e.g. a task that fell to 0:

    L = sum_inf w_i l_i / N_inf + anchor_coef * sum_valid a_i / N_valid

Gradient accumulation (`effective_batch` + `use_effective_batch`): the statistics
above (the counts N, std of A, mean of w~) belong to the effective batch, i.e. every
micro-batch of one optimizer step, on every rank. The trainer computes them once from
the whole accumulation group before its micro-batches run; each micro-batch then
returns its share of the group's loss (its sums over the group's N), so the summed
gradients of k micro-batches of B are the gradient of one batch of k x B.

Optional "fm_noise" / "fm_time" /
"label_drop" entries fix the flow-matching noise and time and the CFG label
dropout (tests of that equivalence; normally they are drawn here).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from tensordict import TensorDict, TensorDictBase
from tensordict.utils import NestedKey
from torchrl.objectives import LossModule

from .policy import NEGATIVE, POSITIVE, UNCONDITIONAL, FlowMatchingPolicy

MODES = ("weighted", "cfg")


def steps_with_weight(data: TensorDictBase, *, positive_only: bool, anchor_coef: float) -> TensorDictBase:
    """The steps that carry loss: with `positive_only` and no anchor, failures weigh 0, so skip their forward passes."""
    if positive_only and anchor_coef == 0:
        return data[data.get("advantage").reshape(-1) > 0]
    return data


@dataclass(frozen=True)
class EffectiveBatch:
    """What the loss normalises by, over all micro-batches of one optimizer step and every rank.

    Attributes:
        main_counts: samples of the advantage term in each micro-batch (summed over ranks).
        valid_counts: valid (non-padding) samples in each micro-batch (summed over ranks).
        adv_scale: the advantages are divided by it (their std + eps; 1 without normalisation).
        raw_mean: mean of exp(A / adv_scale / T) over the advantage-term samples (weighted mode).
    """

    main_counts: tuple[float, ...]
    valid_counts: tuple[float, ...]
    adv_scale: float = 1.0
    raw_mean: float = 1.0

    @property
    def n_main(self) -> float:
        """Advantage-term samples of the whole effective batch."""
        return sum(self.main_counts)

    @property
    def n_valid(self) -> float:
        """Valid samples of the whole effective batch."""
        return sum(self.valid_counts)


class RIPTCFGLoss(LossModule):
    """RIPT-CFG LossModule (see the module docstring for both modes' formulas).

    Args:
        policy: any `FlowMatchingPolicy`; `mode="cfg"` needs `policy.supports_cfg`.
        mode: "weighted" or "cfg".
        temperature: T in w = exp(A_n / T) (weighted mode).
        w_max: upper clip of the self-normalised weight (weighted mode).
        normalize_advantage: divide advantages by their batch std first (weighted mode).
        positive_only: train the advantage term on samples with A > 0 only (weighted mode;
            filtered self-imitation, see the module docstring).
        p_uncond: probability of dropping a label to UNCONDITIONAL (cfg mode).
        sync_across_ranks: all-reduce the batch statistics over the default process
            group and scale the loss for DDP's gradient average (set it when this
            module is wrapped in DistributedDataParallel; a no-op without a group).
        reference, anchor_coef: frozen policy and weight of the anchor term (0: off).
        anchor_num_steps: Euler steps the reference samples its anchor targets with
            (None: its own; more steps give targets that follow its flow, see `relabel_chunks`).

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
            sample_mask: optional [B] bool; False marks padding samples (no loss, no statistics).
            informative: optional [B] or [B, 1] bool; False: the step counts for the anchor only.
            noise: optional [B, chunk, action_dim] flow-matching noise (drawn when absent).
            time: optional [B] flow-matching time (drawn when absent).
            label_drop: optional [B] bool, which CFG labels become UNCONDITIONAL (drawn when absent).
        """

        advantage: NestedKey = "advantage"
        action_chunk: NestedKey = "action_chunk"
        action_mask: NestedKey = "action_mask"
        sample_mask: NestedKey = "sample_mask"
        informative: NestedKey = "informative"
        noise: NestedKey = "fm_noise"
        time: NestedKey = "fm_time"
        label_drop: NestedKey = "label_drop"

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
        positive_only: bool = False,
        p_uncond: float = 0.1,
        sync_across_ranks: bool = False,
        reference: FlowMatchingPolicy | None = None,
        anchor_coef: float = 0.0,
        anchor_num_steps: int | None = None,
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
        if positive_only and mode != "weighted":
            raise ValueError("positive_only applies to mode='weighted' only (cfg mode labels failures NEGATIVE instead).")
        if not 0.0 <= p_uncond <= 1.0:
            raise ValueError(f"p_uncond must be in [0, 1], got {p_uncond}.")
        self.policy = policy
        self.mode = mode
        self.temperature = float(temperature)
        self.w_max = float(w_max)
        self.normalize_advantage = normalize_advantage
        self.positive_only = bool(positive_only)
        self.p_uncond = float(p_uncond)
        self.sync_across_ranks = bool(sync_across_ranks)
        if anchor_coef < 0 or (anchor_coef > 0 and reference is None):
            raise ValueError(f"anchor_coef must be >= 0 and needs a reference policy (got {anchor_coef}, reference={reference is not None}).")
        if reference is not None:
            reference.eval()
            reference.requires_grad_(False)
        # a plain attribute, not a submodule: the frozen copy stays out of parameters(), optimisers and DDP
        object.__setattr__(self, "_reference", reference)
        self.anchor_coef = float(anchor_coef)
        self.anchor_num_steps = anchor_num_steps  # Euler steps of the reference's targets (None: its own); see relabel_chunks
        self._effective: EffectiveBatch | None = None  # set by use_effective_batch (gradient accumulation)

    @property
    def reference(self) -> FlowMatchingPolicy | None:
        """The frozen policy the anchor pulls towards (None without an anchor)."""
        return self._reference

    @property
    def functional(self) -> bool:
        """The policy is called as a stateful module (DDP-friendly), never through functional params."""
        return False

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        """No value estimator: nothing to forward."""

    def _world(self) -> int:
        """Ranks the statistics are reduced over (1 unless syncing inside a process group)."""
        if self.sync_across_ranks and torch_dist.is_available() and torch_dist.is_initialized():
            return torch_dist.get_world_size()
        return 1

    def _global_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum a small detached float64 vector over ranks (gloo reduces on CPU, nccl on the device)."""
        if self._world() == 1:
            return values
        buf = values.cpu() if torch_dist.get_backend() == "gloo" else values
        torch_dist.all_reduce(buf, op=torch_dist.ReduceOp.SUM)
        return buf.to(values.device)

    def _masks(self, tensordict: TensorDictBase) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(advantage [B], valid [B] bool, main [B] bool): main marks the samples of the advantage term."""
        keys = self.tensor_keys
        advantage = tensordict.get(keys.advantage, None)
        if advantage is None:
            raise KeyError(f"RIPTCFGLoss: advantage entry {keys.advantage!r} is missing; run the GroupLOOAdvantage transform first or set_keys(advantage=...).")
        advantage = advantage.reshape(tensordict.shape[0])
        if not torch.isfinite(advantage).all():
            raise ValueError("RIPTCFGLoss: advantages contain NaN or inf; check the rewards/success signal fed to the advantage transform.")
        sample_mask = tensordict.get(keys.sample_mask, None)
        valid = torch.ones_like(advantage, dtype=torch.bool) if sample_mask is None else sample_mask.reshape(-1).to(advantage.device).bool()
        informative = tensordict.get(keys.informative, None)
        main = valid if informative is None else valid & informative.reshape(-1).to(advantage.device).bool()
        if self.positive_only:  # failures leave the advantage term (the anchor still covers every valid step)
            main = main & (advantage > 0)
        return advantage, valid, main

    def _statistics(self, parts: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], weights: bool | None = None) -> EffectiveBatch:
        """EffectiveBatch of (advantage, valid, main) triples: two small all-reduces, one without the weights' (cfg mode)."""
        advs = [a.detach().double().reshape(-1).cpu() for a, _, _ in parts]
        mains = [m.reshape(-1).cpu().double() for _, _, m in parts]
        valids = [v.reshape(-1).cpu().double() for _, v, _ in parts]
        adv, main = torch.cat(advs), torch.cat(mains)
        moments = torch.stack([(main * adv).sum(), (main * adv * adv).sum()])
        summed = self._global_sum(torch.cat([torch.stack([m.sum() for m in mains]), torch.stack([v.sum() for v in valids]), moments]))
        k = len(parts)
        main_counts, valid_counts = tuple(summed[:k].tolist()), tuple(summed[k : 2 * k].tolist())
        if not (self.mode == "weighted" if weights is None else weights):
            return EffectiveBatch(main_counts, valid_counts)
        n, s1, s2 = float(sum(main_counts)), summed[2 * k], summed[2 * k + 1]
        scale = 1.0
        if self.normalize_advantage and n > 1:
            var = ((s2 - s1 * s1 / n) / (n - 1)).clamp_min(0.0)  # unbiased, as torch.std
            scale = float(var.sqrt()) + 1e-6
        raw = self._raw_weights(adv, scale)
        raw_sum = float(self._global_sum((main * raw).sum().reshape(1))[0])
        return EffectiveBatch(main_counts, valid_counts, adv_scale=scale, raw_mean=raw_sum / max(n, 1.0))

    def _raw_weights(self, advantage: torch.Tensor, adv_scale: float) -> torch.Tensor:
        """exp(A / adv_scale / T) in float64; the clamp keeps all-equal negative advantages from giving 0/0."""
        return torch.exp((advantage.detach().double() / adv_scale / self.temperature).clamp(min=-50.0, max=50.0))

    def effective_batch(self, micro_batches: Sequence[TensorDictBase]) -> EffectiveBatch:
        """The statistics of the effective batch made of `micro_batches` (this rank's parts; all ranks when syncing).

        Reads only advantages and masks (no forward pass). Every rank must call it for the
        same step when `sync_across_ranks`, as it all-reduces.
        """
        return self._statistics([self._masks(td.reshape(-1) if td.batch_dims != 1 else td) for td in micro_batches])

    @contextlib.contextmanager
    def use_effective_batch(self, statistics: EffectiveBatch) -> Iterator[None]:
        """Inside: each forward weighs and normalises with `statistics` and returns its share of that batch's loss."""
        previous = self._effective
        self._effective = statistics
        try:
            yield
        finally:
            self._effective = previous

    def advantage_weights(self, advantage: torch.Tensor, sample_mask: torch.Tensor | None = None, statistics: EffectiveBatch | None = None) -> torch.Tensor:
        """Detached AWR weights [B] for `weighted` mode (formula in the module docstring).

        Statistics come from `statistics` (an effective batch these samples belong to) or else
        run over the samples in `sample_mask` (all if None), over every rank when
        `sync_across_ranks`; masked-out samples get arbitrary (finite) weights.
        """
        adv = advantage.detach().double().reshape(-1)
        if statistics is None:
            mask = torch.ones_like(adv, dtype=torch.bool) if sample_mask is None else sample_mask.detach().reshape(-1).bool()
            statistics = self._statistics([(adv, mask, mask)], weights=True)
        raw = self._raw_weights(adv, statistics.adv_scale)
        return (raw / max(statistics.raw_mean, 1e-300)).clamp(max=self.w_max).float()

    def _anchor_loss(self, policy_td: TensorDictBase) -> torch.Tensor:
        """Per-sample flow-matching loss of the policy on chunks the frozen reference samples at the same observations.

        Why: fitting the policy's own few-step samples again and again narrows its action
        distribution each iteration (measured on ToyVLAEnv: the flow-matching loss on its own
        samples fell 7x while success rose and then collapsed, groups turning all-fail). Pulling
        towards the reference's samples is a KL-to-reference term for flow policies: it adds no
        new information, it only keeps the policy near where it started.
        """
        reference = self._reference
        ref_chunk = reference.sample_chunk(policy_td, num_steps=self.anchor_num_steps)
        anchor_td = policy_td.copy()
        anchor_td.set("action_chunk", ref_chunk.to(policy_td.get("action_chunk").dtype))
        return self.policy.per_sample_loss(anchor_td)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """The loss of this batch; inside `use_effective_batch`, its share of the effective batch's loss."""
        keys = self.tensor_keys
        if tensordict.batch_dims != 1:
            tensordict = tensordict.reshape(-1)
        chunk = tensordict.get(keys.action_chunk, None)
        if chunk is None and tensordict.get(keys.advantage, None) is not None:
            raise KeyError(f"RIPTCFGLoss: action chunk entry {keys.action_chunk!r} is missing; store the policy's chunk or set_keys(action_chunk=...).")
        advantage, valid, main = self._masks(tensordict)
        # alone: this batch is the effective batch (its own statistics, plain means)
        stats = self._effective if self._effective is not None else self._statistics([(advantage, valid, main)])
        # the policy reads its fixed entry names: map the configured keys onto them (shallow)
        policy_td = tensordict.copy()
        policy_td.set("action_chunk", chunk)
        mask = tensordict.get(keys.action_mask, None)
        if mask is not None:
            policy_td.set("action_mask", mask)
        elif "action_mask" in policy_td.keys():
            policy_td.del_("action_mask")

        noise = tensordict.get(keys.noise, None)
        time = tensordict.get(keys.time, None)
        positive = advantage > 0
        if self.mode == "weighted":
            per_sample = self.policy.per_sample_loss(policy_td, noise=noise, time=time)
            weights = self.advantage_weights(advantage, statistics=stats).to(per_sample)
            frac_uncond = torch.zeros(())
        else:
            labels = torch.where(positive, POSITIVE, NEGATIVE).long()
            drop = tensordict.get(keys.label_drop, None)
            drop = torch.rand(labels.shape, device=labels.device) < self.p_uncond if drop is None else drop.reshape(labels.shape).to(labels.device).bool()
            labels = torch.where(drop, torch.full_like(labels, UNCONDITIONAL), labels)
            per_sample = self.policy.per_sample_loss(policy_td, noise=noise, time=time, optimality=labels)
            weights = torch.ones_like(per_sample)
            frac_uncond = drop[main].float().mean() if main.any() else torch.zeros(())
        objective = weights * per_sample
        anchor_mean = torch.zeros(())
        if self.anchor_coef > 0:
            anchor = self._anchor_loss(policy_td)
            anchor_mean = anchor.detach()[valid].mean() if valid.any() else torch.zeros(())
        # sums over this rank's samples / the effective batch's global counts, x world for DDP's average
        fmain, fvalid = main.to(per_sample), valid.to(per_sample)
        n_main, n_valid = max(stats.n_main, 1.0), max(stats.n_valid, 1.0)
        loss = (fmain * objective).sum() / n_main
        if self.anchor_coef > 0:
            loss = loss + self.anchor_coef * (fvalid * anchor).sum() / n_valid
        loss = loss * self._world()
        if not main.all():  # diagnostics over the samples the advantage term trains on
            per_sample, weights, positive = per_sample[main], weights[main], positive[main]
        if per_sample.numel() == 0:
            per_sample = weights = torch.zeros(1, device=advantage.device)
            positive = torch.zeros(1, dtype=torch.bool, device=advantage.device)
        return TensorDict(
            {
                "loss_ript_cfg": loss,
                "fm_loss_mean": per_sample.detach().mean(),
                "weight_mean": weights.detach().mean(),
                "weight_min": weights.detach().min(),
                "weight_max": weights.detach().max(),
                "frac_positive": positive.float().mean(),
                "frac_unconditional": frac_uncond,
                "anchor_loss": anchor_mean,
            },
            batch_size=[],
        )
