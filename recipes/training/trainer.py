"""The RIPT-CFG trainer: every training run's phases around one state object.

`python recipes/ript_cfg.py`, the LIBERO and toy learning checks and tuning trials
all run this one loop; a new experiment is a config key here, never a second loop.
One iteration:

  1. collect: draw (task, init state) contexts, run K episodes of each through the
     group collector, leave-one-out advantages; all-equal groups are dropped and more
     contexts drawn until `algo.target_groups` are kept or `algo.max_context_draws` is hit;
  2. prepare: the kept steps are weighted, kept over the last `algo.buffer_iterations`
     iterations (each task an equal share with `algo.balance_tasks`), joined by replayed
     expert demos (`algo.demo_replay`) and put in a TensorDictReplayBuffer;
  3. update: epochs x minibatches of RIPTCFGLoss (accumulation, clipping, AMP, non-finite skip);
  4. evaluate on held-out init states (at the start with `eval.at_start`, every `eval.every`
     iterations and at the end), log, checkpoint.

With `algo.ema_decay` a copy of the policy trains and the policy that acts, is evaluated
and is saved is the exponential average of its weights. Every iteration seeds its
randomness from (train.seed, rank, iteration) and a checkpoint holds the rest, so a
resumed run continues as an unbroken one would (the step window restarts empty).
`train.max_minutes` bounds collection + update time (evaluation excluded) across resumes.
Data parallel: contexts are sharded over ranks, kept-group counts all-reduced every round
(`algo.target_groups`, `algo.max_context_draws`, `optim.minibatch_size` are global),
evaluation episodes sharded and merged; rank 0 alone writes.
"""

from __future__ import annotations

import copy
import random
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tensordict import TensorDictBase

from ript.algos import GroupLOOAdvantage, SpreadKeeper, StepWindow, make_replay_buffer, refill_replay_buffer, relabel_chunks, steps_with_weight, training_mode, update_policy
from ript.algos.collection_profile import PARTS, CollectionProfile
from ript.algos.evaluation import eval_schedule, evaluate_contexts, shard_schedule, summarise
from ript.algos.group_collection import Context, Episode
from ript.algos.sampling import ContextSampler

from .checkpoint import CheckpointError, Checkpointer, write_json_atomic
from .config import ConfigError, RIPTConfig, task_specs, to_dict, to_yaml
from .distributed import DistInfo, all_gather_object, all_reduce_sum, any_rank, barrier, check_replicas, rank_seed, shard
from .factories import (make_collector, make_env, make_group_collector, make_loss, make_optimization, make_policy, max_decision_steps, phase_threads, stored_keys,
                        torch_threads, wrap_ddp)
from .faults import EnvFault, EnvSupervisor, NonFiniteGuard, check_finite_parameters
from .health import HEALTH_COLUMNS, SYSTEM_COLUMNS, HealthMonitor
from .logging import MetricLogger, PhaseTimer, memory_stats
from .optim import EarlyStopping, WeightEMA, amp_dtype
from .plotting import plot_training_curves
from .preemption import PreemptionHandler
from .video import episode_frames, tile_episodes, write_mp4

GROUP_BASE = 10**12  # training group ids never meet the envs' default ids (worker * 1e6 + counter)
EVAL_GROUP_BASE = 5 * 10**12
LOSS_METRICS = {"loss/total": "loss_ript_cfg", "loss/fm_mean": "fm_loss_mean", "loss/weight_mean": "weight_mean", "loss/weight_max": "weight_max",
                "loss/frac_positive": "frac_positive", "loss/anchor": "anchor_loss"}


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
    per_task = [f"{split}/success_rate_{s.label}" for split in ("train", "eval") for s in task_specs(cfg)]
    return [
        "train/success_rate", "train/episodes", "eval/success_rate", "eval/episodes", "eval/ci95_low", "eval/ci95_high", *per_task,
        "groups/kept", "groups/dropped", "groups/contexts_drawn", "data/decision_steps", "data/env_frames", "data/sim_steps", "data/idle_frames",
        "data/trained_steps", "data/upsampled_steps", "data/demo_steps", *LOSS_METRICS,
        "policy/spread_after_update", "policy/noise_scale",
        "optim/grad_norm_preclip", "optim/lr", "optim/steps", "optim/skipped_nonfinite",
        "time/collect_s", "time/buffer_s", "time/update_s", "time/eval_s", "time/iteration_s", "time/ript_minutes",
        *(f"time/collect_{part}_s" for part in PARTS), "perf/sim_steps_per_s", "perf/decision_steps_per_s", "mem/rss_gib", "mem/gpu_peak_gib", "mem/gpu_reserved_gib",
        "faults/env_faults", "faults/env_restarts", "faults/groups_discarded", "optim/nonfinite_streak", "sampling/mastered_contexts",
        *SYSTEM_COLUMNS, *HEALTH_COLUMNS,
    ]  # fmt: skip


def seed_iteration(seed: int, iteration: int) -> torch.Generator:
    """Seed python/numpy/torch for one iteration; returns a generator for minibatch order."""
    s = (seed * 1_000_003 + iteration * 7_919) % 2**31
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)
    return torch.Generator().manual_seed(s + 1)


@dataclass
class RunState:
    """What the run has done so far; saved in every checkpoint and restored on resume."""

    iteration: int = 0
    ript_seconds: float = 0.0  # collection + update time (train.max_minutes counts it; evaluation does not)
    evaluations: list[dict[str, Any]] = field(default_factory=list)  # every held-out evaluation's summary


@dataclass
class Collected:
    """One iteration's kept steps (None: no informative group) and what the collection counted."""

    data: TensorDictBase | None
    metrics: dict[str, float]
    preempted: bool = False  # a signal arrived: collection stopped early, the iteration must be discarded


class Trainer:
    """Owns one run: its policy, env workers, loss, optimizer, sampler, logger and checkpoints."""

    def __init__(self, cfg: RIPTConfig, out_dir: Path, dist: DistInfo) -> None:
        self.cfg, self.out_dir, self.dist = cfg, out_dir, dist
        self.device, self.seed = dist.device, rank_seed(cfg.train.seed, dist)
        self.tasks = task_specs(cfg)
        self.state = RunState()
        if dist.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "config.yaml").write_text(to_yaml(cfg))
        self.logger = MetricLogger(out_dir, csv_enabled=cfg.logging.csv, wandb_mode=cfg.logging.wandb, project=cfg.logging.project,
                                   run_name=cfg.logging.run_name, config=to_dict(cfg), progress=cfg.logging.progress,
                                   is_main=dist.is_main, columns=csv_columns(cfg))
        self.health = HealthMonitor(cfg.health, out_dir, self.device, self.logger.info, is_main=dist.is_main)
        self.checkpointer = Checkpointer(out_dir, keep_last=cfg.checkpoint.keep_last, is_main=dist.is_main)
        seed_iteration(self.seed, -1)
        self.policy = make_policy(cfg, self.device)
        self.policy.record_noise = cfg.algo.target_steps > 0  # the sampling noise, for relabel_chunks
        self.envs = EnvSupervisor(self._build_env, policy=self.policy, step_timeout_s=cfg.env.step_timeout_s,
                                  max_restarts=cfg.env.max_restarts, log=self.logger.info)
        self.collector = make_group_collector(self.envs, cfg)
        self.nonfinite = NonFiniteGuard(cfg.optim.max_consecutive_nonfinite)
        self._build_learning()
        self._build_data()
        self.timer = PhaseTimer()
        self.collect_threads, self.update_threads = phase_threads(cfg)  # the policy acts beside the env workers, updates alone
        self.videos: list[Path] = []
        # called as on_evaluation(iteration, metrics) after each logged evaluation (a tuning trial reports to its
        # pruner); an exception it raises (optuna.TrialPruned) ends the run, the caller's close() stops the workers
        self.on_evaluation: Callable[[int, dict[str, Any]], None] | None = None

    def _build_env(self, attempt: int) -> tuple[Any, Any]:
        """The env workers and their collector; attempt k > 0 is a rebuild after a worker fault (seeds offset)."""
        env = make_env(self.cfg, self.policy, seed=self.seed + 7_919 * attempt)
        return env, make_collector(env, self.policy, self.cfg)

    def _build_learning(self) -> None:
        """Trained copy and weight average, loss (DDP-wrapped across ranks), optimizer, early stopping, spread keeper."""
        cfg, a = self.cfg, self.cfg.algo
        self.learner = copy.deepcopy(self.policy) if a.ema_decay > 0 else self.policy
        self.ema = WeightEMA(self.learner, a.ema_decay, average=self.policy, warmup=False) if a.ema_decay > 0 else None
        self.loss_module: Any = make_loss(cfg, self.learner, sync_across_ranks=self.dist.enabled)
        if self.dist.enabled:  # DDP broadcasts rank 0's weights into the trained copy; the average and the anchor follow
            self.loss_module = wrap_ddp(self.loss_module, self.device)
            for start_copy in (self.policy, self.loss_module.module.reference):
                if start_copy is not None and start_copy is not self.learner:
                    start_copy.load_state_dict(self.learner.state_dict())
        self.opt = make_optimization(cfg, self.learner, self.device)
        self.early = EarlyStopping(cfg.early_stopping.patience, cfg.early_stopping.min_delta)
        self.spread = SpreadKeeper(seed=self.seed + self.dist.rank) if a.keep_spread else None

    def _build_data(self) -> None:
        """Advantages, context sampler, step window, replay buffer and demo replay."""
        cfg, a = self.cfg, self.cfg.algo
        # anchor_all_states: uniform groups come out too, flagged uninformative (the loss anchors on them only)
        self.advantage = GroupLOOAdvantage(a.group_size, drop_uninformative=not a.anchor_all_states)
        contexts = [(t, s) for t in range(len(self.tasks)) for s in cfg.env.train_init_states]
        if len(contexts) >= self.dist.world_size:  # each rank its own share (else all share all, with distinct seeds)
            contexts = shard(contexts, self.dist)
        self.sampler = ContextSampler(contexts, cfg.sampling.strategy, group_size=a.group_size,
                                      success_rate_target=cfg.sampling.success_rate_target, seed=self.seed)
        self.window = StepWindow(a.buffer_iterations, balance_key="task_index" if a.balance_tasks else None)
        per_iteration = a.max_context_draws * a.group_size * (max_decision_steps(cfg) + 1)
        demo_rows = a.demo_replay * len(self.tasks) * 80
        self.buffer = make_replay_buffer(per_iteration * a.buffer_iterations * (len(self.tasks) if a.balance_tasks else 1) + demo_rows)
        self.demos = None
        if a.demo_replay:
            from ript.envs import NormStats

            from .demo_replay import DemoReplay

            self.demos = DemoReplay(cfg, self.policy, NormStats.from_lerobot_checkpoint(str(cfg.policy.path)))

    # ------------------------------------------------------------------ resume and checkpoints

    def resume(self, path: Path) -> None:
        """Restore weights, optimizer, schedule, scaler, RNG, sampler, early stopping and the run state."""
        try:
            saved = Checkpointer.load(path, policy=self.policy, optimizer=self.opt.optimizer, scheduler=self.opt.scheduler, scaler=self.opt.scaler)
        except CheckpointError:
            raise
        except Exception as err:  # truncated/corrupt files, a checkpoint of another policy size
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise ConfigError(f"cannot resume from {path} ({type(err).__name__}: {first}): resume from another checkpoints/iter_* dir or start a new run") from err
        extra = saved["extra"]
        per_rank = extra.get("sampler_ranks")
        self.sampler.load_state_dict(per_rank[self.dist.rank] if per_rank and len(per_rank) == self.dist.world_size else extra["sampler"])
        self.early.load_state_dict(extra["early_stopping"])
        self.policy.noise_scale = float(extra.get("noise_scale", 1.0))  # acting temperature (algo.keep_spread)
        if self.ema is not None:  # the checkpoint's policy is the average; the trained copy is stored beside it
            self.learner.load_state_dict(extra.get("learner_weights", self.policy.state_dict()))
            if "learner_weights" not in extra:
                self.logger.info("note: the checkpoint was written without algo.ema_decay: training continues from its weights")
        self.state = RunState(**extra["run_state"]) if "run_state" in extra else RunState(iteration=saved["iteration"])
        self.state.iteration = saved["iteration"]
        self.health.load_state_dict(extra.get("health", {}), self.state.iteration)
        note = " (the window of earlier iterations' steps restarts empty)" if self.cfg.algo.buffer_iterations > 1 else ""
        self.logger.info(f"resumed from {path} at iteration {self.state.iteration}{note}")

    def save(self, it: int, metrics: dict[str, Any], is_best: bool = False, sampler_state: dict[str, Any] | None = None) -> None:
        """Checkpoint iteration `it` (never over the last good one with a diverged model); all ranks wait for it."""
        check_finite_parameters(self.policy, it)
        if self.ema is not None:
            check_finite_parameters(self.learner, it)
        sampler_state = sampler_state if sampler_state is not None else self.sampler.state_dict()
        extra = {"sampler": sampler_state, "sampler_ranks": all_gather_object(self.dist, sampler_state),
                 "early_stopping": self.early.state_dict(), "noise_scale": self.policy.noise_scale,
                 "run_state": {**asdict(self.state), "iteration": it}, "health": self.health.state_dict()}
        if self.ema is not None:
            extra["learner_weights"] = self.learner.state_dict()
        self.checkpointer.save(it, policy=self.policy, optimizer=self.opt.optimizer, scheduler=self.opt.scheduler, scaler=self.opt.scaler,
                               config_yaml=to_yaml(self.cfg), metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                               extra=extra, is_best=is_best)
        barrier(self.dist, f"checkpoint of iteration {it}")  # the others wait (timed) while rank 0 writes

    # ------------------------------------------------------------------ collect

    def collect(self, it: int, preemption: PreemptionHandler | None = None) -> Collected:
        """Dynamic sampling: rounds of contexts x K episodes until enough informative groups are kept (global counts).

        A worker that dies or hangs mid-round (`EnvFault`) discards the round's incomplete groups
        (never recorded, never trained on), the env is rebuilt and drawing goes on. A signal stops
        collection between rounds (`preempted`).
        """
        a, dist = self.cfg.algo, self.dist
        self.advantage.reset_stats()
        kept: list[TensorDictBase] = []
        counts = {"draws": 0, "frames": 0, "group_frames": 0, "discarded": 0}
        per_task: dict[int, list[bool]] = {t: [] for t in range(len(self.tasks))}
        bar = self.logger.progress(total=a.max_context_draws * a.group_size, desc=f"iter {it + 1} rollouts")
        start = time.perf_counter()
        with CollectionProfile(self.envs.env, self.policy, worker_clocks=self.cfg.env.kind == "libero") as profile:
            while True:  # every rank takes the same decisions from global counts, so all run the same rounds
                kept_all, draws_all = (int(v) for v in all_reduce_sum(dist, [self.advantage.kept_groups, counts["draws"]]))
                if kept_all >= a.target_groups or draws_all >= a.max_context_draws:
                    break
                if preemption is not None and any_rank(dist, preemption.requested):
                    bar.close()
                    return Collected(None, {}, preempted=True)
                round_total = min(a.contexts_per_iteration * dist.world_size, a.max_context_draws - draws_all)
                contexts = self.sampler.sample(len(range(dist.rank, round_total, dist.world_size)))
                if contexts:
                    self._collect_round(it, contexts, kept, counts, per_task, bar)
        bar.close()
        parts = profile.breakdown(time.perf_counter() - start)
        counts["sim_steps"] = int(parts.pop("sim_steps")) or counts["frames"] * self.policy.n_action_steps  # no worker clocks: full chunks
        metrics = self._collect_metrics(counts, per_task)
        metrics.update({f"time/collect_{part}_s": seconds for part, seconds in parts.items()})
        return Collected(torch.cat(kept, 0) if kept else None, metrics)

    def _collect_round(self, it: int, contexts: list[tuple[int, int]], kept: list[TensorDictBase], counts: dict[str, int],
                       per_task: dict[int, list[bool]], bar: Any) -> None:
        """One round: K episodes of each context; complete groups go to `kept`, outcomes to the sampler."""
        base = GROUP_BASE + self.dist.rank * 10**9 + it * 10_000 + counts["draws"]
        groups = {base + j: Context(*ctx) for j, ctx in enumerate(contexts)}

        ours = torch.tensor(list(groups))

        def feed(batch: TensorDictBase) -> None:
            counts["frames"] += batch.numel()
            counts["group_frames"] += int(torch.isin(batch.get("group_id").reshape(-1), ours).sum())  # the rest ran no group of ours
            out = self.advantage(batch)
            if out is not None:  # only complete groups come out: they stay valid after a fault
                gids = out.get("group_id").reshape(-1).tolist()
                out.set("task_index", torch.tensor([groups[g].task for g in gids], dtype=torch.int64))
                kept.append(out)

        results: dict[int, list[bool]] = defaultdict(list)  # filled as episodes end: what finished survives a fault

        def record(ep: Episode) -> None:
            results[ep.group_id].append(ep.success)
            bar.update(1)

        self.advantage.clear()
        try:
            with self.envs.guard(f"iteration {it + 1} rollouts"):
                self.collector.collect(groups, self.cfg.algo.group_size, on_batch=feed, on_episode=record)
        except EnvFault as fault:
            self.advantage.clear()
            lost = sum(len(results[g]) < self.cfg.algo.group_size for g in groups)
            counts["discarded"] += lost
            self.logger.info(f"[iter {it + 1}] {fault}; {lost} group(s) discarded, rebuilding the env "
                             f"(restart {self.envs.restarts + 1}/{self.envs.max_restarts})")
            self.envs.restart()  # RunAborted once env.max_restarts is used up
        for gid, ctx in groups.items():
            outcome = results.get(gid, [])
            if len(outcome) == self.cfg.algo.group_size:  # incomplete groups are never recorded nor trained on
                self.sampler.record(tuple(ctx), outcome)
                per_task[ctx.task] += outcome
        counts["draws"] += len(contexts)

    def _collect_metrics(self, counts: dict[str, int], per_task: dict[int, list[bool]]) -> dict[str, float]:
        """The iteration's collection counts, summed over ranks (what the run did, not what rank 0 did)."""
        stats = self.advantage.stats()
        counted = {"groups/kept": stats["kept_groups"], "groups/dropped": stats["dropped_groups"], "groups/contexts_drawn": counts["draws"],
                   "data/decision_steps": stats["kept_steps"], "data/env_frames": counts["frames"], "faults/groups_discarded": counts["discarded"],
                   "data/sim_steps": counts["sim_steps"], "data/idle_frames": counts["frames"] - counts["group_frames"]}
        local = [*counted.values(), *(x for t in range(len(self.tasks)) for x in (sum(per_task[t]), len(per_task[t])))]
        total = [int(v) for v in all_reduce_sum(self.dist, local)]
        n = len(counted)  # then (wins, trials) per task
        wins, trials = sum(total[n::2]), sum(total[n + 1::2])
        metrics = {"train/success_rate": wins / trials if trials else float("nan"), "train/episodes": trials}
        metrics.update(zip(counted, total[:n]))
        for t, spec in enumerate(self.tasks):
            if total[n + 1 + 2 * t]:
                metrics[f"train/success_rate_{spec.label}"] = total[n + 2 * t] / total[n + 1 + 2 * t]
        return metrics

    # ------------------------------------------------------------------ prepare and update

    def prepare(self, collected: Collected, it: int, gen: torch.Generator) -> dict[str, int]:
        """The steps this iteration trains on: weighted own steps in the window, demos beside them, into the buffer."""
        a = self.cfg.algo
        data = collected.data.select(*stored_keys(self.policy, collected.data)) if collected.data is not None else None
        if self.spread is not None and data is not None and not self.spread.ready:  # the spread to hold: the first kept steps'
            self.spread.set_probe(self.policy, data)
        if data is not None:
            data = steps_with_weight(data, positive_only=a.positive_only, anchor_coef=a.anchor_coef)
            if a.target_steps:  # train on the flow's own samples of the acted noise
                data = relabel_chunks(self.policy, data, a.target_steps).exclude("action_noise")
            if self.demos is not None:  # own steps train on their whole chunk, as demos do up to the episode's end
                data.set("action_mask", torch.ones(data.shape[0], self.policy.chunk_size, dtype=torch.bool))
        self.window.add(data)
        data, upsampled = self.window.gather(generator=gen)
        n_demo = 0
        if self.demos is not None:
            demos = self.demos.draw(it)
            n_demo = demos.shape[0]
            if data is None:
                data = demos.select(*stored_keys(self.policy, demos))
            else:  # the entries both carry (task_index is the own steps' alone: the update never reads it)
                shared = [k for k in data.keys(True, True) if k in demos.keys(True, True)]
                data = torch.cat([data.select(*shared), demos.select(*shared)], 0)
        n_steps = refill_replay_buffer(self.buffer, data)
        # one collective for all: update if ANY rank has data (DDP: all or none), and log the run's counts
        total = [int(v) for v in all_reduce_sum(self.dist, [n_steps, upsampled, n_demo])]
        return {"data/trained_steps": total[0], "data/upsampled_steps": total[1], "data/demo_steps": total[2]}

    def update(self, gen: torch.Generator) -> dict[str, float]:
        """Epochs x minibatches of the loss on the buffer; the weight average follows every taken step."""
        cfg = self.cfg

        def after_step(finite: bool) -> None:
            self.nonfinite(finite)  # RunAborted after optim.max_consecutive_nonfinite skips in a row
            if self.ema is not None and finite:
                self.ema.update(self.learner)

        with training_mode(self.learner, True):  # train mode: gradient checkpointing acts in updates only
            upd = update_policy(self.loss_module, self.buffer, self.opt.optimizer, epochs=cfg.optim.epochs,
                                minibatch_size=cfg.optim.minibatch_size, grad_accum_steps=cfg.optim.grad_accum_steps,
                                max_grad_norm=cfg.optim.max_grad_norm, scaler=self.opt.scaler, amp_dtype=amp_dtype(cfg.amp, self.device),
                                scheduler=self.opt.scheduler, device=self.device, generator=gen, step_callback=after_step)
        metrics = {name: upd.get(key, float("nan")) for name, key in LOSS_METRICS.items()}
        metrics.update({"optim/grad_norm_preclip": upd["grad_norm_preclip"], "optim/steps": upd["optimizer_steps"],
                        "optim/skipped_nonfinite": upd["skipped_nonfinite"]})
        return metrics

    def hold_spread(self) -> dict[str, float]:
        """Rescale the acting noise to the first iteration's action spread (every rank joins: one temperature)."""
        drifted = self.spread.restore(self.policy)[0] if self.spread.ready else float("nan")
        self.policy.noise_scale = float(all_reduce_sum(self.dist, [self.policy.noise_scale])[0]) / self.dist.world_size
        return {"policy/spread_after_update": drifted, "policy/noise_scale": self.policy.noise_scale}

    # ------------------------------------------------------------------ evaluate

    def evaluate(self, it: int, record_video: bool) -> dict[str, float]:
        """Held-out success (per task, per init state, Wilson 95%) with `eval.fixture_placement`; merged over ranks."""
        cfg, dist = self.cfg, self.dist
        schedule = shard_schedule(eval_schedule(len(self.tasks), cfg.eval.init_states, cfg.eval.episodes), dist.rank, dist.world_size)
        libero = cfg.env.kind == "libero"
        try:
            with self.envs.guard(f"evaluation after iteration {it}"):
                if libero:  # evaluation's own fixture placement (upstream: the published protocol), training's again after
                    self.envs.env.set_fixture_placement(cfg.eval.fixture_placement)
                with torch_threads(self.collect_threads):
                    records, videos = evaluate_contexts(self.collector, self.policy, schedule, max_videos=4 if record_video else 0,
                                                        group_id_base=EVAL_GROUP_BASE + dist.rank * 10**9 + it * 10**5)
                if libero:
                    self.envs.env.set_fixture_placement(cfg.env.fixture_placement)
        except EnvFault as fault:
            self.logger.info(f"[iter {it}] {fault}; evaluation skipped, rebuilding the env")
            self.envs.restart()
            return {"eval/success_rate": float("nan")}
        records = [r for part in all_gather_object(dist, records) for r in part] if dist.enabled else records
        summary = summarise(records, [s.label for s in self.tasks])
        self.state.evaluations.append({"iteration": it, "ript_minutes": round(self.state.ript_seconds / 60, 2),
                                       "fixture_placement": cfg.eval.fixture_placement if libero else None, **summary})
        if dist.is_main:
            write_json_atomic(self.out_dir / "evaluations.json", {"tasks": [s.label for s in self.tasks], "evaluations": self.state.evaluations})
            if videos:
                path = write_mp4(tile_episodes([episode_frames(list(zip(*frames)), ok) for frames, ok in videos]),
                                 self.out_dir / "videos" / f"eval_iter_{it:06d}.mp4", fps=5)
                self.videos.append(path)
                self.logger.log_video(it, path)
        metrics = {"eval/success_rate": summary["success_rate"], "eval/episodes": summary["episodes"],
                   "eval/ci95_low": summary["ci95"][0], "eval/ci95_high": summary["ci95"][1]}
        metrics.update({f"eval/success_rate_{label}": v["success_rate"] for label, v in summary["tasks"].items()})
        return metrics

    # ------------------------------------------------------------------ the loop

    def out_of_time(self) -> bool:
        """Would another iteration of average length take collection + update time past train.max_minutes?"""
        budget, done = self.cfg.train.max_minutes, self.state.iteration
        return budget is not None and done > 0 and self.state.ript_seconds * (1 + 1 / done) > budget * 60

    def iteration(self, it: int, preemption: PreemptionHandler) -> dict[str, Any] | None:
        """Collect, prepare and update once (iteration `it` + 1); None when a signal interrupted the collection."""
        gen = seed_iteration(self.seed, it)
        self.timer.reset()
        # rollouts in eval mode (lerobot's inference setting)
        with self.timer("collect"), training_mode(self.policy, False), torch_threads(self.collect_threads):
            collected = self.collect(it, preemption)
        if collected.preempted:
            return None
        with self.timer("buffer"):
            metrics = {**collected.metrics, **self.prepare(collected, it, gen)}
        with self.timer("update"), torch_threads(self.update_threads):
            if metrics["data/trained_steps"] > 0:
                metrics.update(self.update(gen))
            else:
                self.logger.info(f"[iter {it + 1}] no informative group (all rollouts of each context agreed): update skipped")
                metrics.update({"loss/total": float("nan"), "optim/steps": 0, "optim/skipped_nonfinite": 0})
            if self.spread is not None:
                metrics.update(self.hold_spread())
        self.state.ript_seconds += sum(self.timer.times.values())
        self.state.iteration = it + 1
        metrics.update({"optim/lr": self.opt.optimizer.param_groups[0]["lr"], "optim/nonfinite_streak": self.nonfinite.streak})
        return metrics

    def run(self) -> dict[str, Any]:
        """Train until train.iterations, train.max_minutes, early stopping or a signal; returns the summary."""
        cfg, dist = self.cfg, self.dist
        stopped, metrics = "completed", {}
        self.logger.info(f"RIPT-CFG '{cfg.config_name}': {cfg.env.kind} tasks {[f'{s.suite}:{s.task_id}' for s in self.tasks]}, "
                         f"policy {cfg.policy.kind}{'' if cfg.policy.path is None else ' ' + cfg.policy.path}, "
                         f"{cfg.train.iterations} iterations on {self.device}; outputs in {self.out_dir}")
        if cfg.eval.at_start and self.state.iteration == 0 and not self.state.evaluations:
            self.start_evaluation()
        with PreemptionHandler() as preemption:
            while self.state.iteration < cfg.train.iterations and not self.out_of_time():
                it = self.state.iteration
                sampler_at_start = self.sampler.state_dict()  # a preempted iteration is discarded: resume redoes it exactly
                metrics = self.iteration(it, preemption) or {}
                if not metrics:  # the policy has not changed yet this iteration: checkpoint the previous one
                    latest = self.checkpointer.latest()
                    if latest is None or latest.name != f"iter_{it:06d}":
                        self.save(it, metrics, sampler_state=sampler_at_start)
                    stopped = f"preempted by {_signal_name(preemption)} during iteration {it + 1}: checkpoint of iteration {it} kept, continue with checkpoint.resume=auto"
                    break
                stopped = self.finish_iteration(it + 1, metrics, preemption) or stopped
                if stopped != "completed":
                    break
        if stopped == "completed":
            if self.out_of_time() and self.state.iteration < cfg.train.iterations:
                stopped = f"time budget: train.max_minutes={cfg.train.max_minutes} reached after {self.state.ript_seconds / 60:.1f} minutes"
            metrics = {**metrics, **(self.end_evaluation() or {})}
        return self.summary(stopped, metrics)

    def end_evaluation(self) -> dict[str, Any] | None:
        """Evaluate the final iteration if its evaluation is missing (a worker fault, or a run stopped before it); resume-safe."""
        it, done = self.state.iteration, [e["iteration"] for e in self.state.evaluations]
        if it == 0 or (done and done[-1] == it):
            return None
        self.logger.info(f"[iter {it}] the final held-out evaluation is missing: evaluating iteration {it}")
        with self.timer("eval"):
            metrics = self.evaluate(it, record_video=False)
        if metrics["eval/success_rate"] != metrics["eval/success_rate"]:  # NaN: it failed again; the run ends without it
            return None
        is_best = self.early.update(metrics["eval/success_rate"])
        self.logger.log(it, metrics)
        self.save(it, metrics, is_best)
        if self.on_evaluation is not None:
            self.on_evaluation(it, metrics)
        return metrics

    def start_evaluation(self) -> None:
        """The held-out evaluation before any update, logged at iteration 0 and checkpointed (a resume keeps it)."""
        with self.timer("eval"):
            metrics = self.evaluate(0, record_video=False)
        is_best = self.early.update(metrics["eval/success_rate"])
        self.logger.log(0, metrics)
        self.save(0, metrics, is_best)
        if self.on_evaluation is not None:
            self.on_evaluation(0, metrics)

    def finish_iteration(self, it: int, metrics: dict[str, Any], preemption: PreemptionHandler) -> str | None:
        """Evaluate, log and checkpoint after iteration `it`; a reason to stop, or None to go on."""
        cfg, dist = self.cfg, self.dist
        last = it == cfg.train.iterations or self.out_of_time()
        preempted = any_rank(dist, preemption.requested)  # skip evaluation: the grace period is short
        is_best = evaluated = False
        if (it % cfg.eval.every == 0 or last) and not preempted:
            evaluated = True
            if it % cfg.checkpoint.every == 0 or last:  # a kill during a long evaluation keeps the update (resume evaluates a missing last one)
                self.save(it, metrics)
            record = cfg.logging.video_every > 0 and it % cfg.logging.video_every == 0 and dist.is_main
            with self.timer("eval"):
                metrics.update(self.evaluate(it, record))
            if metrics["eval/success_rate"] == metrics["eval/success_rate"]:  # not NaN (a skipped evaluation)
                is_best = self.early.update(metrics["eval/success_rate"])
        metrics.update(self.timer.metrics())
        metrics["time/ript_minutes"] = self.state.ript_seconds / 60
        collect_s = max(self.timer.times.get("collect", 0.0), 1e-9)  # every rank's steps over this rank's collection time
        metrics["perf/sim_steps_per_s"] = metrics["data/sim_steps"] / collect_s
        metrics["perf/decision_steps_per_s"] = metrics["data/env_frames"] / collect_s
        metrics.update(memory_stats(self.device))
        metrics.update(self.envs.metrics())
        metrics["sampling/mastered_contexts"] = sum(self.sampler.is_mastered(c) for c in self.sampler.contexts)
        metrics.update(self.health.observe(it, metrics, self.checkpointer.latest()))
        self.logger.log(it, metrics)
        periodic = it % cfg.checkpoint.every == 0 or last or is_best
        if periodic:
            self.save(it, metrics, is_best)
        if evaluated and self.on_evaluation is not None:
            self.on_evaluation(it, metrics)
        if any_rank(dist, self.health.stop_reason is not None):  # health.action=stop: every rank stops at this iteration
            if not periodic:
                self.save(it, metrics)
            return f"stopped by {self.health.stop_reason or 'a health check on another rank'}; checkpoint saved (health.json has the findings)"
        if self.early.should_stop:
            if not periodic:
                self.save(it, metrics)
            return f"early stop: no eval improvement > {cfg.early_stopping.min_delta} in {self.early.patience} evaluations"
        if preempted or any_rank(dist, preemption.requested):  # one rank's signal stops all at the same iteration
            if not periodic:
                self.save(it, metrics)
            return f"preempted by {_signal_name(preemption)}: checkpoint saved, continue with checkpoint.resume=auto"
        return None

    def summary(self, stopped: str, metrics: dict[str, Any]) -> dict[str, Any]:
        """Check the replicas agree, plot the curves, print where the outputs are; the run's summary."""
        dist = self.dist
        replica_hash = check_replicas(dist, self.policy)
        if dist.enabled:
            self.logger.info(f"parameters bit-identical on all {dist.world_size} ranks (sha1 {replica_hash})")
        plot = None
        if dist.is_main and self.cfg.logging.csv and self.logger.csv_path is not None and self.logger.csv_path.is_file():
            plot = plot_training_curves(self.logger.csv_path, self.out_dir / "training_curves.png")
            self.logger.log_image(plot, "plots/training_curves")
        self.logger.close()
        evaluations = self.out_dir / "evaluations.json"
        out = {"output_dir": self.out_dir, "iterations": self.state.iteration, "stopped": stopped, "metrics_csv": self.logger.csv_path,
               "plot": plot, "videos": self.videos, "last_checkpoint": self.checkpointer.latest(), "best_checkpoint": self.checkpointer.best(),
               "evaluations": evaluations if evaluations.is_file() else None, "evaluation_history": self.state.evaluations,
               "ript_minutes": self.state.ript_seconds / 60, "final_metrics": metrics, "param_hash": replica_hash}
        if dist.is_main:
            print(f"\nrun {stopped} after {self.state.iteration} iterations ({out['ript_minutes']:.1f} collect+update minutes). Outputs in {self.out_dir}:")
            for key in ("metrics_csv", "evaluations", "plot", "last_checkpoint", "best_checkpoint"):
                print(f"  {key:16s} {out[key]}")
            print(f"  {'videos':16s} {', '.join(map(str, self.videos)) or '(none)'}")
            if len(self.state.evaluations) > 1:
                first, last = self.state.evaluations[0], self.state.evaluations[-1]
                for label in first["tasks"]:
                    print(f"  held-out {label}: {first['tasks'][label]['success_rate']:.2f} (iteration {first['iteration']}) -> "
                          f"{last['tasks'][label]['success_rate']:.2f} (iteration {last['iteration']})")
        return out

    def close(self) -> None:
        """Stop the env workers (the logger is closed by `summary`, or here after a failure)."""
        self.logger.close()
        self.envs.close()


def _signal_name(preemption: PreemptionHandler) -> str:
    return getattr(preemption.received, "name", "a signal on another rank")

