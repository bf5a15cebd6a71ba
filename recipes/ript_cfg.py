"""RIPT-CFG: RL post-training of a flow-matching VLA (PI0) on LIBERO, from TorchRL parts.

    python recipes/ript_cfg.py                                   # main job (configs/quick_test.yaml)
    python recipes/ript_cfg.py --config-name toy optim.lr=3e-4   # any key is overridable
    python recipes/ript_cfg.py --config-name quick_test checkpoint.resume=auto logging.output_dir=runs/x
    python recipes/ript_cfg.py --config-name rl_training policy.path=/ckpt/pi0 --dry-run   # config + parameter count

One iteration, top to bottom:
  1. draw (task, init state) contexts (uniform or curriculum, mastered ones skipped)
  2. queue K episodes per context on the env workers; a torchrl Collector rolls them out
  3. leave-one-out advantages per group; all-equal groups dropped; more contexts drawn
     until `algo.target_groups` informative groups are kept or `algo.max_context_draws` is hit
  4. the kept decision steps go to a TensorDictReplayBuffer (uint8 images), beside those of the
     last `algo.buffer_iterations` - 1 iterations (each task given an equal share: `algo.balance_tasks`)
  5. epochs x minibatches of RIPTCFGLoss (grad accumulation, clipping, AMP, non-finite skip)
  6. log (console, CSV, wandb), periodic eval on held-out init states + video, checkpoint
With `algo.ema_decay` a copy of the policy trains, and the policy that acts, is evaluated and
is saved is the exponential average of its weights (updated after every optimizer step).

Reproducibility: every iteration seeds its randomness from (train.seed, rank,
iteration), and a checkpoint holds everything else (weights, optimizer, scheduler,
scaler, RNG, sampler, early stopping, the trained copy under algo.ema_decay), so 2 iterations
+ resume + 2 iterations give the same parameters as 4 iterations in one go. Not the window of
earlier iterations' steps (algo.buffer_iterations > 1): it restarts empty on resume.
Hooks for DDP and reliability: a `DistInfo` travels through the run (rank-0 logging
and checkpoints; contexts drawn per rank); SIGTERM/SIGINT checkpoint and exit 0.

Data parallel (torchrun --nproc_per_node=N recipes/ript_cfg.py ...): every rank draws
contexts from its own shard of (task, init state) pairs with its own seed; the kept-group
and context-draw counts are all-reduced after every collection round, so
`algo.target_groups`, `algo.max_context_draws` and `optim.minibatch_size` are GLOBAL
(`algo.contexts_per_iteration` is per rank and round). The loss is DDP-wrapped with
global advantage statistics; evaluation episodes are sharded and merged; rank 0 alone
writes; the replicas are checked bit-identical at the end.
"""

from __future__ import annotations

import copy
import random
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `ript` importable from a plain checkout too
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from tensordict import TensorDictBase

from ript.algos import (
    GroupLOOAdvantage,
    SpreadKeeper,
    StepWindow,
    training_mode,
    make_replay_buffer,
    refill_replay_buffer,
    relabel_chunks,
    steps_with_weight,
    update_policy,
)
from ript.algos.sampling import ContextSampler
from ript.recipes.common.checkpoint import CheckpointError, Checkpointer, resolve_resume
from ript.recipes.common.config import ConfigError, RIPTConfig, run_main, to_dict, to_yaml
from ript.recipes.common.dry_run import print_dry_run
from ript.recipes.common.distributed import (
    DistInfo,
    all_gather_object,
    all_reduce_sum,
    any_rank,
    barrier,
    check_replicas,
    distributed_session,
    rank_seed,
    shard,
)
from ript.recipes.common.evaluation import evaluate
from ript.recipes.common.faults import EnvFault, EnvSupervisor, NonFiniteGuard, RunAborted, check_finite_parameters
from ript.recipes.common.factories import (
    make_collector,
    make_env,
    make_loss,
    make_optimization,
    make_policy,
    max_decision_steps,
    push_episodes,
    stored_keys,
    wrap_ddp,
)
from ript.recipes.common.logging import MetricLogger, PhaseTimer, memory_stats
from ript.recipes.common.optim import EarlyStopping, WeightEMA, amp_dtype
from ript.recipes.common.plotting import plot_training_curves
from ript.recipes.common.preemption import PreemptionHandler
from ript.recipes.common.preflight import PreflightError, run_preflight
from ript.recipes.common.video import tile_episodes, write_mp4

GROUP_BASE = 10**12  # our group ids never meet the envs' default ids (worker * 1e6 + counter)


# --------------------------------------------------------------------------- run set-up


def resolve_output_dir(cfg: RIPTConfig) -> Path:
    """Where this run writes; refuses to write over another run unless told to resume it."""
    out = cfg.logging.output_dir
    if out is None:
        if cfg.checkpoint.resume == "auto":
            raise ConfigError("checkpoint.resume=auto needs logging.output_dir=<the run's dir> to know which run to continue")
        out = f"runs/{cfg.config_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = Path(out).expanduser()
    existing = path.is_dir() and any((path / name).exists() for name in ("checkpoints", "metrics.csv", "config.yaml"))
    if existing and cfg.checkpoint.resume is None:
        raise ConfigError(
            f"logging.output_dir={path} already holds a run: continue it with checkpoint.resume=auto or choose a new logging.output_dir"
        )
    return path


def csv_columns(cfg: RIPTConfig) -> list[str]:
    """Every metric an iteration may log, so the CSV's columns never change mid-run.

    optim/grad_norm_preclip: the mean over the iteration's optimizer steps of the gradient
    norm before clipping to optim.max_grad_norm (the applied step is at most that norm).
    """
    per_task = [f"{split}/success_rate_task{t}" for split in ("train", "eval") for t in cfg.env.tasks]
    return [
        "train/success_rate", "train/episodes", "eval/success_rate", "eval/episodes", *per_task,
        "groups/kept", "groups/dropped", "groups/contexts_drawn", "data/decision_steps", "data/env_frames",
        "data/trained_steps", "data/upsampled_steps",
        "loss/total", "loss/fm_mean", "loss/weight_mean", "loss/weight_max", "loss/frac_positive", "loss/anchor",
        "policy/spread_after_update", "policy/noise_scale",
        "optim/grad_norm_preclip", "optim/lr", "optim/steps", "optim/skipped_nonfinite",
        "time/collect_s", "time/buffer_s", "time/update_s", "time/eval_s", "time/iteration_s",
        "perf/env_steps_per_s", "mem/rss_gib", "mem/gpu_peak_gib", "mem/gpu_reserved_gib",
        "faults/env_faults", "faults/env_restarts", "faults/groups_discarded", "optim/nonfinite_streak", "sampling/mastered_contexts",
    ]  # fmt: skip


def seed_iteration(seed: int, iteration: int) -> torch.Generator:
    """Seed python/numpy/torch for one iteration; returns a generator for minibatch order."""
    s = (seed * 1_000_003 + iteration * 7_919) % 2**31
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)
    return torch.Generator().manual_seed(s + 1)


@dataclass
class Collected:
    data: TensorDictBase | None
    metrics: dict[str, float]
    outcomes: dict[int, list[bool]] = field(default_factory=dict)  # task_id -> successes
    preempted: bool = False  # a signal arrived: collection stopped early, the iteration must be discarded


# --------------------------------------------------------------------------- collection


def episode_outcomes(batch: TensorDictBase) -> list[tuple[int, bool, int]]:
    """(group_id, success, decision steps) of every episode that ends in this batch."""
    done = batch.get(("next", "done")).reshape(*batch.shape, -1).any(-1)
    if not done.any():
        return []
    gids = batch.get("group_id").reshape(*batch.shape)[done].tolist()
    succ = batch.get(("next", "success")).reshape(*batch.shape, -1).any(-1)[done].tolist()
    steps = batch.get(("next", "step_count")).reshape(*batch.shape)[done].tolist() if ("next", "step_count") in batch.keys(True) else [0] * len(gids)
    return list(zip(gids, succ, steps))


def collect(
    cfg: RIPTConfig,
    it: int,
    dist: DistInfo,
    envs: EnvSupervisor,
    advantage: GroupLOOAdvantage,
    sampler: ContextSampler,
    logger: MetricLogger,
    preemption: PreemptionHandler | None = None,
) -> Collected:
    """Dynamic sampling: rounds of contexts x K episodes until enough informative groups are kept.

    A worker that dies or hangs mid-round (`EnvFault`) discards the round's incomplete
    groups (never recorded, never trained on), the env is rebuilt and drawing goes on.
    A SIGTERM/SIGINT stops collection between rounds (`preempted`).
    """
    a = cfg.algo
    n_workers = envs.env.batch_size.numel()
    advantage.reset_stats()
    kept: list[TensorDictBase] = []
    per_task: dict[int, list[bool]] = defaultdict(list)
    draws = frames = discarded = 0
    bar = logger.progress(total=a.max_context_draws * a.group_size, desc=f"iter {it} rollouts")
    while True:
        # global counts: every rank takes the same decision, so all run the same rounds
        kept_all, draws_all = (int(v) for v in all_reduce_sum(dist, [advantage.kept_groups, draws]))
        if kept_all >= a.target_groups or draws_all >= a.max_context_draws:
            break
        if preemption is not None and any_rank(dist, preemption.requested):
            bar.close()
            return Collected(None, {}, preempted=True)
        round_total = min(a.contexts_per_iteration * dist.world_size, a.max_context_draws - draws_all)
        contexts = sampler.sample(len(range(dist.rank, round_total, dist.world_size)))
        if not contexts:  # the global cap left this rank no context this round
            continue
        groups = {GROUP_BASE + dist.rank * 10**9 + it * 10_000 + draws + j: ctx for j, ctx in enumerate(contexts)}
        episodes = [{"task_id": t, "init_state_id": s, "group_id": g} for g, (t, s) in groups.items() for _ in range(a.group_size)]
        advantage.clear()
        results: dict[int, list[bool]] = defaultdict(list)
        try:
            with envs.guard(f"iteration {it + 1} rollouts"):
                per_worker = push_episodes(envs.env, episodes, n_workers)
                envs.collector.reset()  # every worker starts its first queued episode now
                cap = max(len(q) for q in per_worker) + 2  # batches of about one episode per worker
                for _ in range(cap):
                    batch = next(envs.batches)
                    frames += batch.numel()
                    for gid, ok, _ in episode_outcomes(batch):
                        if gid in groups and len(results[gid]) < a.group_size:
                            results[gid].append(bool(ok))
                            bar.update(1)
                    out = advantage(batch)
                    if out is not None:
                        kept.append(out)  # only complete groups come out: they stay valid after a fault
                    if all(len(results[g]) >= a.group_size for g in groups):
                        break
        except EnvFault as fault:
            lost = [g for g in groups if len(results[g]) < a.group_size]
            discarded += len(lost)
            for g in lost:
                results.pop(g, None)
            advantage.clear()
            logger.info(f"[iter {it + 1}] {fault}; {len(lost)} group(s) discarded, rebuilding the env (restart {envs.restarts + 1}/{envs.max_restarts})")
            envs.restart()  # RunAborted once env.max_restarts is used up
        for gid, (task, init) in groups.items():
            if gid in results:
                sampler.record((task, init), results[gid])
                per_task[task] += results[gid]
        draws += len(contexts)
    bar.close()
    stats = advantage.stats()
    # summed over ranks (a no-op alone): what the run did, not what rank 0 did
    tasks = list(cfg.env.tasks)
    local = [stats["kept_groups"], stats["dropped_groups"], draws, stats["kept_steps"], frames, discarded]
    local += [x for t in tasks for x in (sum(per_task.get(t, [])), len(per_task.get(t, [])))]
    total = [int(v) for v in all_reduce_sum(dist, local)]
    kept_g, dropped_g, draws_g, steps_g, frames_g, discarded_g = total[:6]
    total = total[:5] + total[6:]  # per-task pairs start at 5 again
    wins, trials = sum(total[5::2]), sum(total[6::2])
    metrics = {
        "train/success_rate": wins / trials if trials else float("nan"),
        "train/episodes": trials,
        "groups/kept": kept_g,
        "groups/dropped": dropped_g,
        "groups/contexts_drawn": draws_g,
        "data/decision_steps": steps_g,
        "data/env_frames": frames_g,
        "faults/groups_discarded": discarded_g,
    }
    for i, task in enumerate(tasks):
        if total[6 + 2 * i]:
            metrics[f"train/success_rate_task{task}"] = total[5 + 2 * i] / total[6 + 2 * i]
    return Collected(torch.cat(kept, 0) if kept else None, metrics, dict(per_task))


def evaluate_all_ranks(cfg: RIPTConfig, dist: DistInfo, env: Any, policy: Any, *, record_video: bool) -> tuple[dict[str, float], list]:
    """Held-out evaluation with the episodes sharded over ranks and the results merged on all of them
    (so early stopping and best-checkpoint decisions agree everywhere)."""
    if not dist.enabled:
        return evaluate(cfg, env, policy, record_video=record_video)
    episodes: list = []
    _, videos = evaluate(cfg, env, policy, record_video=record_video, episodes_out=episodes, shard=(dist.rank, dist.world_size))
    merged = [(t, ok) for part in all_gather_object(dist, [(e.task_id, bool(e.success)) for e in episodes]) for t, ok in part]
    by_task: dict[int, list[bool]] = defaultdict(list)
    for task, ok in merged:
        by_task[task].append(ok)
    trials = [ok for _, ok in merged]
    metrics: dict[str, float] = {"eval/success_rate": sum(trials) / len(trials), "eval/episodes": len(trials)}
    for task, v in sorted(by_task.items()):
        metrics[f"eval/success_rate_task{task}"] = sum(v) / len(v)
    return metrics, videos


# --------------------------------------------------------------------------- main


def train(cfg: RIPTConfig) -> dict[str, Any]:
    """Run RIPT-CFG as configured; returns the final metrics and where the outputs are."""
    out_dir = resolve_output_dir(cfg)  # before any work: never touch another run's outputs
    try:
        resume_from = resolve_resume(cfg.checkpoint.resume, out_dir)
    except CheckpointError as e:
        raise ConfigError(str(e)) from e
    try:  # seconds of checks before minutes of work: disk, resume checkpoint, policy checkpoint + norm stats, rendering
        run_preflight(cfg, out_dir, resume_from=resume_from)
    except PreflightError as e:
        raise ConfigError(str(e)) from e
    with distributed_session(cfg.train.device, None if cfg.distributed.backend == "auto" else cfg.distributed.backend, cfg.distributed.timeout_s) as dist:
        try:
            return _train(cfg, out_dir, dist)
        except Exception as err:
            if dist.enabled:  # one line per rank saying who failed, then the traceback; the group is destroyed on the way out
                first = str(err).splitlines()[0] if str(err) else ""
                print(f"rank {dist.rank}/{dist.world_size} failed: {type(err).__name__}: {first} (if another rank failed first, "
                      f"its log has the cause; collectives give up after distributed.timeout_s={cfg.distributed.timeout_s})", file=sys.stderr, flush=True)
            raise


def _train(cfg: RIPTConfig, out_dir: Path, dist: DistInfo) -> dict[str, Any]:
    device = dist.device
    seed = rank_seed(cfg.train.seed, dist)
    resume_from = resolve_resume(cfg.checkpoint.resume, out_dir)
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(to_yaml(cfg))
    logger = MetricLogger(
        out_dir,
        csv_enabled=cfg.logging.csv,
        wandb_mode=cfg.logging.wandb,
        project=cfg.logging.project,
        run_name=cfg.logging.run_name,
        config=to_dict(cfg),
        progress=cfg.logging.progress,
        is_main=dist.is_main,
        columns=csv_columns(cfg),
    )
    checkpointer = Checkpointer(out_dir, keep_last=cfg.checkpoint.keep_last, is_main=dist.is_main)
    seed_iteration(seed, -1)

    policy = make_policy(cfg, device)
    policy.record_noise = cfg.algo.target_steps > 0  # the sampling noise, for relabel_chunks

    def build_env(attempt: int) -> tuple[Any, Any]:  # attempt k > 0: a rebuild after a worker fault, seeds offset
        env = make_env(cfg, policy, seed=seed + 7_919 * attempt)
        return env, make_collector(env, policy, cfg)

    envs = EnvSupervisor(build_env, policy=policy, step_timeout_s=cfg.env.step_timeout_s, max_restarts=cfg.env.max_restarts, log=logger.info)
    nonfinite = NonFiniteGuard(cfg.optim.max_consecutive_nonfinite)
    try:
        return _run(cfg, out_dir, dist, device, seed, resume_from, logger, checkpointer, policy, envs, nonfinite)
    except BaseException:
        logger.close()  # flush what was logged before the failure
        raise
    finally:
        envs.close()


def _run(
    cfg: RIPTConfig,
    out_dir: Path,
    dist: DistInfo,
    device: torch.device,
    seed: int,
    resume_from: Path | None,
    logger: MetricLogger,
    checkpointer: Checkpointer,
    policy: Any,
    envs: EnvSupervisor,
    nonfinite: NonFiniteGuard,
) -> dict[str, Any]:
    a = cfg.algo
    # with algo.ema_decay a copy trains (`learner`) and `policy` (what acts, is evaluated and saved) holds its weight average
    learner = copy.deepcopy(policy) if a.ema_decay > 0 else policy
    ema = WeightEMA(learner, a.ema_decay, average=policy, warmup=False) if a.ema_decay > 0 else None
    loss_module = make_loss(cfg, learner, sync_across_ranks=dist.enabled)
    if dist.enabled:  # DDP broadcasts rank 0's initial weights to every rank here
        loss_module = wrap_ddp(loss_module, device)
        # ... into the trained copy; the average and the anchor's reference start from those weights too
        for start_copy in (policy, loss_module.module.reference):
            if start_copy is not None and start_copy is not learner:
                start_copy.load_state_dict(learner.state_dict())
    opt = make_optimization(cfg, learner, device)

    def after_step(finite: bool) -> None:
        nonfinite(finite)  # RunAborted after optim.max_consecutive_nonfinite skips in a row
        if ema is not None and finite:
            ema.update(learner)

    # anchor_all_states: uniform groups come out too, flagged uninformative (the loss anchors on them only)
    advantage = GroupLOOAdvantage(cfg.algo.group_size, drop_uninformative=not cfg.algo.anchor_all_states)
    per_iteration = a.max_context_draws * a.group_size * (max_decision_steps(cfg) + 1)
    # balancing can upsample every task to the largest's count
    buffer = make_replay_buffer(per_iteration * a.buffer_iterations * (len(cfg.env.tasks) if a.balance_tasks else 1))
    window = StepWindow(a.buffer_iterations, balance_key="task_id" if a.balance_tasks else None)
    contexts = [(t, s) for t in cfg.env.tasks for s in cfg.env.train_init_states]
    if len(contexts) >= dist.world_size:  # each rank its own share (else all ranks share all, with distinct seeds)
        contexts = shard(contexts, dist)
    sampler = ContextSampler(
        contexts, cfg.sampling.strategy, group_size=cfg.algo.group_size, success_rate_target=cfg.sampling.success_rate_target, seed=seed
    )
    early = EarlyStopping(cfg.early_stopping.patience, cfg.early_stopping.min_delta)
    spread = SpreadKeeper(seed=seed + dist.rank) if cfg.algo.keep_spread else None

    start_it = 0
    if resume_from is not None:
        try:
            state = Checkpointer.load(resume_from, policy=policy, optimizer=opt.optimizer, scheduler=opt.scheduler, scaler=opt.scaler)
        except CheckpointError:
            raise
        except Exception as err:  # truncated/corrupt files, a checkpoint of another policy size
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise ConfigError(f"cannot resume from {resume_from} ({type(err).__name__}: {first}): resume from another checkpoints/iter_* dir or start a new run") from err
        per_rank = state["extra"].get("sampler_ranks")
        sampler.load_state_dict(per_rank[dist.rank] if per_rank and len(per_rank) == dist.world_size else state["extra"]["sampler"])
        early.load_state_dict(state["extra"]["early_stopping"])
        policy.noise_scale = float(state["extra"].get("noise_scale", 1.0))  # acting temperature (algo.keep_spread)
        if ema is not None:  # the checkpoint's policy is the average; the trained copy is stored beside it
            learner.load_state_dict(state["extra"].get("learner_weights", policy.state_dict()))
            if "learner_weights" not in state["extra"]:
                logger.info("note: the checkpoint was written without algo.ema_decay: training continues from its weights")
        start_it = state["iteration"]
        window_note = " (the window of earlier iterations' steps restarts empty)" if a.buffer_iterations > 1 else ""
        logger.info(f"resumed from {resume_from} at iteration {start_it}{window_note}")

    def save(it: int, metrics: dict[str, Any], is_best: bool = False, sampler_state: dict[str, Any] | None = None) -> None:
        check_finite_parameters(policy, it)  # never replace the last good checkpoint by a diverged model
        if ema is not None:
            check_finite_parameters(learner, it)
        sampler_state = sampler_state if sampler_state is not None else sampler.state_dict()
        sampler_ranks = all_gather_object(dist, sampler_state)  # every rank's contexts and outcomes
        checkpointer.save(
            it,
            policy=policy,
            optimizer=opt.optimizer,
            scheduler=opt.scheduler,
            scaler=opt.scaler,
            config_yaml=to_yaml(cfg),
            metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))},
            extra={"sampler": sampler_state, "sampler_ranks": sampler_ranks, "early_stopping": early.state_dict(),
                   "noise_scale": policy.noise_scale, **({"learner_weights": learner.state_dict()} if ema is not None else {})},
            is_best=is_best,
        )
        barrier(dist, f"checkpoint of iteration {it}")  # the others wait (timed) while rank 0 writes

    timer = PhaseTimer()
    metrics: dict[str, Any] = {}
    videos_written: list[Path] = []
    stopped = "completed"
    dtype = amp_dtype(cfg.amp, device)
    logger.info(f"RIPT-CFG '{cfg.config_name}': {cfg.env.kind} {cfg.env.suite if cfg.env.kind == 'libero' else ''} tasks {cfg.env.tasks}, "
                f"policy {cfg.policy.kind}{'' if cfg.policy.path is None else ' ' + cfg.policy.path}, {cfg.train.iterations} iterations on {device}; outputs in {out_dir}")
    with PreemptionHandler() as preemption:
        it = start_it
        while it < cfg.train.iterations:
            gen = seed_iteration(seed, it)
            timer.reset()
            sampler_at_start = sampler.state_dict()  # a preempted iteration is discarded: resume redoes it exactly
            with timer("collect"), training_mode(policy, False):  # rollouts in eval mode (lerobot's inference setting)
                collected = collect(cfg, it, dist, envs, advantage, sampler, logger, preemption)
            if collected.preempted:  # the policy has not changed yet this iteration: checkpoint the previous one
                latest = checkpointer.latest()
                if latest is None or latest.name != f"iter_{it:06d}":
                    save(it, metrics, sampler_state=sampler_at_start)
                stopped = f"preempted by {getattr(preemption.received, 'name', 'a signal on another rank')} during iteration {it + 1}: checkpoint of iteration {it} kept, continue with checkpoint.resume=auto"
                break
            with timer("buffer"):
                data = collected.data.select(*stored_keys(policy, collected.data)) if collected.data is not None else None
                if spread is not None and data is not None and not spread.ready:  # the spread to hold: the first kept steps'
                    spread.set_probe(policy, data)
                if data is not None:  # DDP pads a rank left empty
                    data = steps_with_weight(data, positive_only=cfg.algo.positive_only, anchor_coef=cfg.algo.anchor_coef)
                if data is not None and cfg.algo.target_steps:  # train on the flow's own samples of the acted noise
                    data = relabel_chunks(policy, data, cfg.algo.target_steps).exclude("action_noise")
                window.add(data)
                data, upsampled = window.gather(generator=gen)
                n_steps = refill_replay_buffer(buffer, data)
                # one collective for both: update if ANY rank has data (DDP: all or none), and log the run's counts
                n_steps_all, upsampled_all = (int(v) for v in all_reduce_sum(dist, [n_steps, upsampled]))
            metrics = dict(collected.metrics)
            metrics["data/trained_steps"], metrics["data/upsampled_steps"] = n_steps_all, upsampled_all
            with timer("update"), training_mode(learner, True):  # train mode: gradient checkpointing acts in updates only
                if n_steps_all > 0:
                    upd = update_policy(
                        loss_module,
                        buffer,
                        opt.optimizer,
                        epochs=cfg.optim.epochs,
                        minibatch_size=cfg.optim.minibatch_size,
                        grad_accum_steps=cfg.optim.grad_accum_steps,
                        max_grad_norm=cfg.optim.max_grad_norm,
                        scaler=opt.scaler,
                        amp_dtype=dtype,
                        scheduler=opt.scheduler,
                        device=device,
                        generator=gen,
                        step_callback=after_step,
                    )
                    metrics.update({
                        "loss/total": upd.get("loss_ript_cfg", float("nan")),
                        "loss/fm_mean": upd.get("fm_loss_mean", float("nan")),
                        "loss/weight_mean": upd.get("weight_mean", float("nan")),
                        "loss/weight_max": upd.get("weight_max", float("nan")),
                        "loss/frac_positive": upd.get("frac_positive", float("nan")),
                        "loss/anchor": upd.get("anchor_loss", float("nan")),  # 0 unless algo.anchor_coef > 0
                        "optim/grad_norm_preclip": upd["grad_norm_preclip"],
                        "optim/steps": upd["optimizer_steps"],
                        "optim/skipped_nonfinite": upd["skipped_nonfinite"],
                    })
                else:
                    logger.info(f"[iter {it + 1}] no informative group (all rollouts of each context agreed): update skipped")
                    metrics.update({"loss/total": float("nan"), "optim/steps": 0, "optim/skipped_nonfinite": 0})
            if spread is not None:  # hold the acting spread (every rank joins the average: one acting temperature)
                with timer("update"):
                    drifted = spread.restore(policy)[0] if spread.ready else float("nan")
                    policy.noise_scale = float(all_reduce_sum(dist, [policy.noise_scale])[0]) / dist.world_size
                metrics.update({"policy/spread_after_update": drifted, "policy/noise_scale": policy.noise_scale})
            metrics["optim/lr"] = opt.optimizer.param_groups[0]["lr"]
            metrics["optim/nonfinite_streak"] = nonfinite.streak
            it += 1
            is_best = False
            preempted = any_rank(dist, preemption.requested)  # skip evaluation: the grace period is short
            if (it % cfg.eval.every == 0 or it == cfg.train.iterations) and not preempted:
                record = cfg.logging.video_every > 0 and it % cfg.logging.video_every == 0 and dist.is_main
                videos = []
                with timer("eval"):
                    try:
                        with envs.guard(f"evaluation after iteration {it}"):
                            eval_metrics, videos = evaluate_all_ranks(cfg, dist, envs.env, policy, record_video=record)
                        is_best = early.update(eval_metrics["eval/success_rate"])
                    except EnvFault as fault:
                        logger.info(f"[iter {it}] {fault}; evaluation skipped, rebuilding the env")
                        envs.restart()
                        eval_metrics = {"eval/success_rate": float("nan")}
                metrics.update(eval_metrics)
                if videos and dist.is_main:
                    path = write_mp4(tile_episodes(videos), out_dir / "videos" / f"eval_iter_{it:06d}.mp4", fps=5)
                    videos_written.append(path)
                    logger.log_video(it, path)
            metrics.update(timer.metrics())
            metrics["perf/env_steps_per_s"] = metrics["data/env_frames"] / max(timer.times.get("collect", 0.0), 1e-9)
            metrics.update(memory_stats(device))
            metrics.update(envs.metrics())
            metrics["sampling/mastered_contexts"] = sum(sampler.is_mastered(c) for c in sampler.contexts)
            logger.log(it, metrics)
            if it % cfg.checkpoint.every == 0 or it == cfg.train.iterations or is_best:
                save(it, metrics, is_best)
            if early.should_stop:
                stopped = f"early stop: no eval improvement > {cfg.early_stopping.min_delta} in {early.patience} evaluations"
                if it % cfg.checkpoint.every != 0:
                    save(it, metrics)
                break
            if preempted or any_rank(dist, preemption.requested):  # one rank's SIGTERM stops all at the same iteration
                if not (it % cfg.checkpoint.every == 0 or it == cfg.train.iterations or is_best):
                    save(it, metrics)
                stopped = f"preempted by {getattr(preemption.received, 'name', 'a signal on another rank')}: checkpoint saved, continue with checkpoint.resume=auto"
                break
    replica_hash = check_replicas(dist, policy)
    if dist.enabled:
        logger.info(f"parameters bit-identical on all {dist.world_size} ranks (sha1 {replica_hash})")
    plot = None
    if dist.is_main and cfg.logging.csv and logger.csv_path is not None and logger.csv_path.is_file():
        plot = plot_training_curves(logger.csv_path, out_dir / "training_curves.png")
        logger.log_image(plot, "plots/training_curves")
    logger.close()
    summary = {
        "output_dir": out_dir,
        "iterations": it,
        "stopped": stopped,
        "metrics_csv": logger.csv_path,
        "plot": plot,
        "videos": videos_written,
        "last_checkpoint": checkpointer.latest(),
        "best_checkpoint": checkpointer.best(),
        "final_metrics": metrics,
        "param_hash": replica_hash,
    }
    if dist.is_main:
        print(f"\nrun {stopped} after {it} iterations. Outputs in {out_dir}:")
        for key in ("metrics_csv", "plot", "last_checkpoint", "best_checkpoint"):
            print(f"  {key:16s} {summary[key]}")
        print(f"  {'videos':16s} {', '.join(map(str, videos_written)) or '(none)'}")
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--dry-run" in argv:  # the resolved config and the size of the policy it builds; no env, no outputs
        run_main(print_dry_run, [a for a in argv if a != "--dry-run"])
        return None
    try:
        return run_main(train, argv)
    except RunAborted as err:  # repeated env faults or divergence: one line, the last good checkpoint stays
        print(f"run stopped: {err}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
