"""The RIPT-CFG iteration's data and update blocks: replay buffer, step window, relabelling, spread, update.

The trainer (recipes/training/trainer.py) runs them after the group collector
(algos/group_collection.py) has produced an iteration's kept steps:

    refill_replay_buffer(buffer, window.gather()[0])
    metrics = update_policy(loss_module, buffer, optimizer, epochs=..., minibatch_size=...)

Nothing here imports LIBERO or ript.envs.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections import defaultdict, deque
from collections.abc import Callable, Iterator

import torch
from tensordict import TensorDictBase
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.data.replay_buffers.samplers import SamplerWithoutReplacement

from .policy import FlowMatchingPolicy, evaluating


# -- replay buffer ------------------------------------------------------------------
def make_replay_buffer(capacity: int, *, device: torch.device | str | None = None) -> TensorDictReplayBuffer:
    """On-policy buffer of decision steps: TensorDictReplayBuffer over LazyTensorStorage (dtypes kept: uint8 images stay uint8)."""
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}.")
    return TensorDictReplayBuffer(storage=LazyTensorStorage(capacity, device=device if device is not None else "cpu"), sampler=SamplerWithoutReplacement())


def refill_replay_buffer(buffer: TensorDictReplayBuffer, data: TensorDictBase | None) -> int:
    """Replace the buffer's content by `data` (on-policy: one iteration's kept steps); returns its length."""
    buffer.empty()
    if data is None or data.batch_size.numel() == 0:  # TensorDict.numel() is never below 1
        return 0
    capacity = buffer._storage.max_size
    if data.numel() > capacity:
        raise ValueError(f"{data.numel()} kept steps exceed the buffer capacity {capacity}; raise the capacity or lower target_groups.")
    buffer.extend(data.reshape(-1))
    return len(buffer)


def balance_by_key(data: TensorDictBase, key: str | tuple[str, ...], *, generator: torch.Generator | None = None) -> TensorDictBase:
    """Upsample every group of equal `key` rows (e.g. a task's instruction tokens) to the largest group's size.

    Why: on several tasks at once, the kept successes come mostly from the easiest task, so the update
    would serve it most and the hardest task least. Drawing each smaller group's extra rows with
    replacement gives every task the same share of the batch and drops no row. Returns `data`
    unchanged when it holds one group; otherwise a copy, each group's rows first in their original order.
    """
    values = data.get(key).reshape(data.shape[0], -1)
    _, group = torch.unique(values, dim=0, return_inverse=True)
    counts = torch.bincount(group)
    if counts.numel() < 2:
        return data
    largest = int(counts.max())
    index = []
    for g in range(counts.numel()):
        rows = torch.nonzero(group == g).reshape(-1)
        extra = rows[torch.randint(rows.numel(), (largest - rows.numel(),), generator=generator)]
        index += [rows, extra]
    return data[torch.cat(index)]


class StepWindow:
    """The kept steps of the last `iterations` iterations that kept any, trained on together (newest last).

    Why: on a policy that succeeds rarely, one iteration's successes are few, and an on-policy update
    forgets them at the next. Keeping them for a few iterations (AWR's FIFO buffer) keeps imitating
    them while new ones arrive; `iterations=1` is on-policy. With `balance_key` (e.g. the task id or
    its instruction tokens) every group of equal keys gets the same share (`balance_by_key`), so the
    task with the fewest successes is not the one served least.
    """

    def __init__(self, iterations: int, *, balance_key: str | tuple[str, ...] | None = None,
                 generator: torch.Generator | None = None) -> None:
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1 (1 trains on the latest kept steps only), got {iterations}.")
        self.parts: deque[TensorDictBase] = deque(maxlen=iterations)
        self.balance_key = balance_key
        self.generator = generator

    def add(self, steps: TensorDictBase | None) -> None:
        """One iteration's kept steps; an iteration that kept none leaves the window as it was."""
        if steps is not None and steps.batch_size.numel() > 0:
            self.parts.append(steps.reshape(-1))

    def gather(self, generator: torch.Generator | None = None) -> tuple[TensorDictBase | None, int]:
        """The window's steps (balanced when asked) and how many rows balancing added; (None, 0) when empty.

        `generator` draws the balancing rows instead of the window's own (e.g. one seeded per iteration).
        A window of one iteration, unbalanced, returns that iteration's steps themselves, not a copy.
        """
        if not self.parts:
            return None, 0
        data = self.parts[0] if len(self.parts) == 1 else torch.cat(list(self.parts), 0)  # on-policy: no copy of the images
        if self.balance_key is None:
            return data, 0
        balanced = balance_by_key(data, self.balance_key, generator=generator if generator is not None else self.generator)
        return balanced, balanced.shape[0] - data.shape[0]


def relabel_chunks(policy: FlowMatchingPolicy, data: TensorDictBase, num_steps: int, *, batch_size: int = 256) -> TensorDictBase:
    """Replace each stored chunk by the same noise integrated with `num_steps` Euler steps (a copy; `data` is kept).

    Why: flow matching on a policy's own samples is a fixed point only if the samples follow the
    flow the policy holds. Few-step samples do not: on LIBERO the shipped PI0's 5-step chunks have
    0.85x the spread of 50-step chunks from the same noise (`benchmarks/sampling_steps.py`), so every
    update that fits them narrows the policy, and the next iteration samples the narrower policy again.
    Targets integrated with many steps from the noise that produced the acted chunk are what the flow
    maps that noise to; the advantage of the acted chunk still applies (same noise, nearby action).
    Needs td["action_noise"] (set `policy.record_noise = True` before collecting) and the policy that
    acted (relabel right after collection, before the update).
    """
    if "action_noise" not in data.keys():
        raise KeyError("relabel_chunks needs the sampling noise: set policy.record_noise = True before collecting.")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
    flat = data.reshape(-1)
    with evaluating(policy):
        parts = [policy.sample_chunk(flat[i : i + batch_size], noise=flat[i : i + batch_size].get("action_noise"), num_steps=num_steps)
                 for i in range(0, flat.shape[0], batch_size)]
    chunk = torch.cat(parts, 0) if parts else flat.get("action_chunk").clone()
    out = flat.clone(False)  # shallow: only the chunk entry is new
    out.set("action_chunk", chunk.to(flat.get("action_chunk")))
    return out.reshape(data.shape)


def action_spread(policy: FlowMatchingPolicy, probe: TensorDictBase, unit_noise: torch.Tensor) -> float:
    """Spread of the executed actions at fixed observations: std over noise draws, mean over steps and real dims.

    `unit_noise` [draws, P, chunk_size, action_dim] is standard normal; it is scaled by `policy.noise_scale`,
    so the spread is that of the actions the policy takes. Fixed noise makes two measurements comparable.
    """
    if unit_noise.shape[0] < 2:
        raise ValueError("action_spread needs at least two noise draws per observation")
    with evaluating(policy):
        chunks = torch.stack([policy.sample_actions(probe, noise=n * policy.noise_scale) for n in unit_noise])
    dims = policy.padded_from or chunks.shape[-1]
    return float(chunks[..., : policy.n_action_steps, :dims].std(0).mean())


def match_action_spread(policy: FlowMatchingPolicy, probe: TensorDictBase, unit_noise: torch.Tensor, target: float, *,
                        rounds: int = 2, bounds: tuple[float, float] = (0.25, 4.0)) -> tuple[float, float]:
    """Set `policy.noise_scale` so that the action spread on `probe` equals `target`; returns the spread (found, reached).

    Why: fitting a flow policy to its own rollouts narrows it (one sampled chunk per observation, fitted for
    several minibatches), and a narrow policy may stop finding the successes its groups need; widening the
    acting noise of a narrowed policy recovered much of its success on LIBERO (benchmarks/results/learning_libero_runs.md
    has the measurements, and shows narrowing is not the whole story). Holding the spread is the flow-policy analogue of an entropy target (SAC): flow policies
    have no entropy in closed form, the std of samples from fixed noise stands in. The spread is close to
    proportional to the noise scale, so a few multiplicative corrections reach the target.
    """
    found = spread = action_spread(policy, probe, unit_noise)
    for _ in range(rounds):
        if spread <= 0:
            break
        policy.noise_scale = float(min(max(policy.noise_scale * target / spread, bounds[0]), bounds[1]))
        spread = action_spread(policy, probe, unit_noise)
    return found, spread


class SpreadKeeper:
    """Holds a policy's acting action spread at its value on the first data it sees (`match_action_spread`).

    `set_probe` picks `probe_size` observations of one iteration's data and fixed unit noise, and takes the
    spread there as the target; `restore` (after each update) rescales `policy.noise_scale` back to it.
    Only the target and the scale are state: a resumed run picks a new probe and holds the spread it resumed with.
    """

    def __init__(self, probe_size: int = 256, draws: int = 2, seed: int = 0) -> None:
        self.probe_size, self.draws, self.seed = probe_size, draws, seed
        self.probe: TensorDictBase | None = None
        self.unit_noise: torch.Tensor | None = None
        self.target = float("nan")

    @property
    def ready(self) -> bool:
        """Whether set_probe ran: the spread is measured only against a fixed probe."""
        return self.probe is not None

    def set_probe(self, policy: FlowMatchingPolicy, data: TensorDictBase) -> float:
        """Fix the probe (observations of `data`, unit noise) and measure the target spread there; returns it."""
        flat = data.reshape(-1)
        pick = torch.randperm(flat.shape[0], generator=torch.Generator().manual_seed(self.seed))[: self.probe_size]
        self.probe = flat[pick]
        shape = (self.draws, self.probe.shape[0], policy.chunk_size, policy.action_dim)
        self.unit_noise = torch.randn(shape, generator=torch.Generator().manual_seed(self.seed + 2))
        self.target = action_spread(policy, self.probe, self.unit_noise)
        return self.target

    def restore(self, policy: FlowMatchingPolicy) -> tuple[float, float]:
        """Rescale the acting noise after an update; returns (spread after the update, spread reached), over the target."""
        if self.probe is None or self.unit_noise is None:
            raise RuntimeError("SpreadKeeper.restore before set_probe: give it an iteration's data first")
        drifted, reached = match_action_spread(policy, self.probe, self.unit_noise, self.target)
        return drifted / self.target, reached / self.target


# -- update ------------------------------------------------------------------------
def _ddp_group(loss_module: object) -> tuple[bool, int, int]:
    """(is the loss DDP-wrapped, world size, rank); a DDP module implies an initialised process group."""
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(loss_module, DistributedDataParallel) and torch.distributed.is_initialized():
        return True, torch.distributed.get_world_size(), torch.distributed.get_rank()
    return False, 1, 0


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.distributed.get_backend() == "nccl" else torch.device("cpu")


def _all_reduce(values: torch.Tensor) -> torch.Tensor:
    """Sum a small float64 vector over ranks (on the device nccl needs)."""
    buf = values.to(_collective_device())
    torch.distributed.all_reduce(buf, op=torch.distributed.ReduceOp.SUM)
    return buf.cpu()


def _rank_sizes(n: int, world: int, rank: int) -> list[int]:
    """Every rank's buffer length (one all-reduce of a one-hot vector)."""
    v = torch.zeros(world, dtype=torch.float64)
    v[rank] = n
    return [int(x) for x in _all_reduce(v).tolist()]


def _padding_sample(buffer: TensorDictReplayBuffer, sizes: list[int], rank: int) -> TensorDictBase | None:
    """A one-sample template for ranks without data (sent by the rank with most), so they join every DDP step with a zero-weight sample."""
    if min(sizes) > 0:
        return None
    donor = max(range(len(sizes)), key=lambda r: sizes[r])
    box = [buffer[torch.zeros(1, dtype=torch.long)] if rank == donor else None]
    torch.distributed.broadcast_object_list(box, src=donor, device=_collective_device())
    return box[0]


def update_policy(
    loss_module: Callable[[TensorDictBase], TensorDictBase],
    buffer: TensorDictReplayBuffer,
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int = 1,
    minibatch_size: int = 64,
    grad_accum_steps: int = 1,
    max_grad_norm: float | None = 1.0,
    scaler: torch.amp.GradScaler | None = None,
    amp_dtype: torch.dtype | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
    sample_mask_key: str = "sample_mask",
    step_callback: Callable[[bool], None] | None = None,
) -> dict[str, float]:
    """Epochs x shuffled minibatches of the buffer: loss -> backward -> (accumulate) -> clip -> step.

    Each optimizer step takes `grad_accum_steps` minibatches (the last group of an
    epoch may be shorter) and equals one step on their union: the effective batch.
    A loss with `effective_batch` (RIPTCFGLoss) gets the group's statistics (sample
    counts, advantage std, the exponential weights' mean) once, before the group's
    micro-batches run, and each micro-batch returns its share of the group's loss.
    Why per optimizer step and not per iteration over the buffer: it makes
    grad_accum_steps a pure memory knob (k micro-batches of B == one batch of k x B),
    and with grad_accum_steps=1 the weights are those of one minibatch, as before.
    Any other loss callable is taken as a mean and scaled by its micro-batch's sample
    count over the group's.

    A minibatch whose loss is non-finite is not back-propagated; the group's gradient
    is then rescaled by its sample count over the kept micro-batches' count (the weight
    statistics keep the skipped samples). A step whose gradient norm is non-finite is
    skipped (gradients zeroed); both are counted in `skipped_nonfinite`;
    `step_callback(finite)` hears of every optimizer step (True) and every skip
    (False), e.g. to stop after N skips in a row. Clipping scales the gradient to
    norm `max_grad_norm` (None: no clipping). `amp_dtype` runs the loss under
    torch.autocast; pass a GradScaler for float16. Returns the means of the loss
    outputs (the loss itself: per optimizer step, the effective batch's loss) plus
    optimizer_steps, skipped_nonfinite, grad_norm_preclip (mean over steps of the
    gradient norm BEFORE clipping) and lr.

    DDP (`loss_module` wrapped in DistributedDataParallel, its loss built with
    `sync_across_ranks=True`): `minibatch_size` is the GLOBAL minibatch. Ranks may
    hold different amounts of data, yet every rank must run the same number of
    forward/backward passes or DDP deadlocks: each epoch has
    M = ceil(sum of buffer lengths / minibatch_size) minibatches on every rank, and
    each rank splits its own shuffled buffer into M near-equal parts, so every
    sample is used once per epoch and the global minibatch is the union of the
    parts. A part that would be empty (a rank with less data than M) is one
    padding sample masked out through `sample_mask_key`. The effective batch's
    statistics are global (all ranks' parts of the group). Skipping a non-finite
    loss is decided across ranks (any rank non-finite -> all skip), and the
    returned metrics are averaged over ranks.
    """
    ddp, world, rank = _ddp_group(loss_module)
    n = len(buffer)
    sizes = _rank_sizes(n, world, rank) if ddp else [n]
    n_total = sum(sizes)
    if n_total == 0:
        raise ValueError("the replay buffer is empty: collect informative groups before update_policy (or skip the update).")
    if epochs < 1 or minibatch_size < 1 or grad_accum_steps < 1:
        raise ValueError(f"epochs, minibatch_size and grad_accum_steps must be >= 1, got {epochs}, {minibatch_size}, {grad_accum_steps}.")
    template = _padding_sample(buffer, sizes, rank) if ddp else None
    inner = loss_module.module if ddp else loss_module
    shares_from_loss = hasattr(inner, "effective_batch") and hasattr(inner, "use_effective_batch")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    sums: dict[str, float] = defaultdict(float)
    counted = 0
    steps = skipped = 0
    grad_norms: list[float] = []
    step_losses: list[float] = []
    loss_key = "loss"
    optimizer.zero_grad(set_to_none=True)

    def _step(rescale: float) -> None:
        nonlocal steps, skipped
        if scaler is not None:
            scaler.unscale_(optimizer)
        if rescale != 1.0:  # a skipped micro-batch: the kept ones' gradient is the mean over the kept samples
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(rescale)
        norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm is not None else math.inf)
        if not torch.isfinite(norm):
            skipped += 1
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.update()
            if step_callback is not None:
                step_callback(False)
        else:
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            if scheduler is not None:
                scheduler.step()
            steps += 1
            grad_norms.append(float(norm))
            optimizer.zero_grad(set_to_none=True)
            if step_callback is not None:
                step_callback(True)

    def _minibatches() -> Iterator[TensorDictBase]:
        order = torch.randperm(n, generator=generator)
        if not ddp:
            for start in range(0, n, minibatch_size):
                yield buffer[order[start : start + minibatch_size]]
            return
        m = math.ceil(n_total / minibatch_size)  # the same on every rank
        start = 0
        for part in range(m):
            size = n // m + (1 if part < n % m else 0)
            if size > 0:
                yield buffer[order[start : start + size]]
                start += size
                continue
            pad = buffer[order[:1]] if n > 0 else template.clone()
            pad.set(sample_mask_key, torch.zeros(1, dtype=torch.bool))
            yield pad

    def _groups() -> Iterator[list[TensorDictBase]]:
        group: list[TensorDictBase] = []
        for batch in _minibatches():
            group.append(batch)
            if len(group) == grad_accum_steps:
                yield group
                group = []
        if group:
            yield group

    def _counts(group: list[TensorDictBase]) -> list[float]:
        """Samples per micro-batch for a plain mean loss (padding excluded; this rank only)."""
        out = []
        for b in group:
            mask = b.get(sample_mask_key, None)
            out.append(float(b.numel() if mask is None else mask.sum()))
        return out

    for _ in range(epochs):
        for group in _groups():
            if shares_from_loss:
                stats = inner.effective_batch(group)
                counts = list(stats.main_counts)
                context = functools.partial(inner.use_effective_batch, stats)
            else:
                counts = _counts(group)
                context = contextlib.nullcontext
            total = sum(counts)
            kept_count, group_loss, kept = 0.0, 0.0, 0
            for batch, count in zip(group, counts):
                if device is not None:
                    batch = batch.to(device)
                autocast = torch.autocast(device_type=torch.device(device or "cpu").type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
                with autocast, context():
                    out = loss_module(batch)
                loss_key = "loss_ript_cfg" if "loss_ript_cfg" in out.keys() else "loss"
                loss = out["loss_ript_cfg"] if "loss_ript_cfg" in out.keys() else sum(v for k, v in out.items() if k.startswith("loss"))
                finite = bool(torch.isfinite(loss))
                if ddp:  # all ranks must agree, or one backward (and its gradient all-reduce) would be missing
                    finite = bool(_all_reduce(torch.tensor([0.0 if finite else 1.0], dtype=torch.float64))[0] == 0)
                if not finite:
                    skipped += 1
                    if step_callback is not None:
                        step_callback(False)
                    continue
                scaled = loss if shares_from_loss else loss * (count / max(total, 1.0))
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
                kept += 1
                kept_count += count
                group_loss += float(scaled.detach())
                for key, value in out.items():
                    if key != loss_key:
                        sums[key] += float(value.detach())
                counted += 1
            if kept:
                rescale = total / kept_count if 0 < kept_count < total else 1.0
                step_losses.append(group_loss * rescale)
                _step(rescale)
    metrics = {key: value / max(counted, 1) for key, value in sums.items()}
    if step_losses:
        metrics[loss_key] = sum(step_losses) / len(step_losses)
    if ddp and metrics:  # the loss outputs averaged over ranks (the loss itself: the global effective batch's loss)
        keys = sorted(metrics)
        reduced = _all_reduce(torch.tensor([metrics[k] for k in keys], dtype=torch.float64)) / world
        metrics = dict(zip(keys, reduced.tolist()))
    metrics.update(
        optimizer_steps=steps,
        skipped_nonfinite=skipped,
        grad_norm_preclip=sum(grad_norms) / len(grad_norms) if grad_norms else float("nan"),
        lr=optimizer.param_groups[0]["lr"],
    )
    return metrics
