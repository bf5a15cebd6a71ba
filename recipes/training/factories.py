"""make_* factories that turn a validated `RIPTConfig` into the recipe's parts.

Kept out of recipes/ript_cfg.py so the recipe reads top to bottom, and shared with
recipes/eval_libero.py and the benchmarks. LIBERO (ript.envs) is imported lazily,
only when `env.kind=libero`, so toy runs start in about a second.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDictBase
from torchrl.collectors import Collector
from torchrl.envs import EnvBase

from ript.algos import FlowMatchingMLPPolicy, FlowMatchingPolicy, RIPTCFGLoss
from ript.algos.group_collection import EpisodeSource, GroupCollector

from .config import ConfigError, RIPTConfig, TaskSpec, resolve_repo_path, task_specs
from .optim import make_grad_scaler, make_optimizer, make_scheduler

# LIBERO's episode length per suite (openpi's protocol), used when env.max_steps is null.
SUITE_MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}
LIBERO_STATE_DIM, LIBERO_ACTION_DIM = 8, 7


def max_decision_steps(cfg: RIPTConfig) -> int:
    """Decision steps (policy calls) per episode at most."""
    if cfg.env.kind == "toy":
        return cfg.env.toy_max_steps
    sim_steps = cfg.env.max_steps or max(SUITE_MAX_STEPS[s.suite] for s in task_specs(cfg))
    return math.ceil(sim_steps / cfg.policy.n_action_steps)


@dataclass(frozen=True)
class WorkerLayout:
    """Which task each env worker is built for, and which workers may run each task of the run."""

    worker_tasks: list[TaskSpec]
    worker_options: list[list[int]]  # per task index: its own workers, else workers of its suite (they switch task)
    env_task_ids: list[int]  # per task index: the id the env knows it by


def worker_layout(cfg: RIPTConfig, num_envs: int | None = None) -> WorkerLayout:
    """Worker i is built for task i mod T; a task without a worker of its own borrows one of its suite."""
    specs, n = task_specs(cfg), num_envs or cfg.env.num_envs
    workers = [specs[i % len(specs)] for i in range(n)]
    options = []
    for spec in specs:
        own = [i for i, w in enumerate(workers) if w == spec]
        options.append(own or [i for i, w in enumerate(workers) if w.suite == spec.suite])
    return WorkerLayout(workers, options, [s.task_id for s in specs])


# --------------------------------------------------------------------------- policy


def make_policy(cfg: RIPTConfig, device: torch.device) -> FlowMatchingPolicy:
    """PI0 (a local lerobot checkpoint, or tiny and randomly initialised) or the flow-matching MLP."""
    policy = _build_policy(cfg, device)
    if cfg.policy.noise_scale is not None:  # else the checkpoint's own (actor.json), 1.0 for a fresh policy
        policy.noise_scale = float(cfg.policy.noise_scale)
    if cfg.policy.freeze != "none":  # PI0 only (validate refuses it for the MLP)
        policy.freeze(cfg.policy.freeze)
    if cfg.policy.kind == "pi0":  # set both ways: a checkpoint's config.json may carry lerobot's flag
        policy.set_gradient_checkpointing(cfg.policy.gradient_checkpointing)
    e = cfg.env
    if e.kind == "toy" and e.toy_bc_steps > 0:  # a weak start that RL can improve (the toy learning check)
        from .toy_env import behaviour_clone_toy

        behaviour_clone_toy(policy, action_dim=e.toy_action_dim, chunk_size=cfg.policy.chunk_size, steps=e.toy_bc_steps,
                            noise=e.toy_bc_noise, lr=e.toy_bc_lr, batch=e.toy_bc_batch, seed=cfg.train.seed)
    return policy


def _build_policy(cfg: RIPTConfig, device: torch.device) -> FlowMatchingPolicy:
    p = cfg.policy
    cfg_head = cfg.algo.mode == "cfg" or p.cfg_conditioning
    guidance = cfg.algo.guidance if cfg.algo.mode == "cfg" else None
    if p.kind == "mlp":
        if cfg.env.kind == "toy":
            obs_dim, action_dim = 2 * cfg.env.toy_action_dim, cfg.env.toy_action_dim
        else:  # the PI0 state (normalised, padded to 32) and padded actions
            obs_dim, action_dim = 32, 32
        policy: FlowMatchingPolicy = FlowMatchingMLPPolicy(
            obs_dim=obs_dim,
            action_dim=action_dim,
            chunk_size=p.chunk_size,
            n_action_steps=p.n_action_steps,
            obs_keys=[("observation", "state")],
            hidden=p.tiny.hidden,
            depth=p.tiny.depth,
            num_steps=p.num_inference_steps,
            supports_cfg=cfg_head,
            default_guidance=guidance,
            action_low=-1.0,
            action_high=1.0,
        )
        if cfg.env.kind == "libero":
            policy.action_dim_loss = LIBERO_ACTION_DIM
        return policy.to(device)
    from ript.algos.pi0_actor import PI0Actor

    if p.path is not None:
        path = resolve_repo_path(p.path)  # relative paths also resolve from the repo root
        if not Path(path).is_dir():
            raise ConfigError(f"policy.path={p.path} is not a directory: point it at a local lerobot PI0 checkpoint")
        check_trained_camera_size(cfg, Path(path))
        actor = PI0Actor.from_pretrained(
            path,
            tokenizer_path=p.tokenizer_path,
            device=device,
            supports_cfg=cfg_head,
            default_guidance=guidance,
            chunk_size=p.chunk_size,
            n_action_steps=p.n_action_steps,
            num_inference_steps=p.num_inference_steps,
        )
        return actor.to(device)
    t = p.tiny
    actor = PI0Actor.tiny(
        tiny_spec(cfg),
        seed=cfg.train.seed,
        supports_cfg=cfg_head,
        default_guidance=guidance,
        chunk_size=p.chunk_size,
        n_action_steps=p.n_action_steps,
        image_size=t.image_size,
        num_inference_steps=p.num_inference_steps,
        device=str(device),
    )
    return actor.to(device)


def tiny_spec(cfg: RIPTConfig) -> Any:
    """The TinyPI0Spec that `policy.tiny` describes (a fresh tiny PI0's sizes)."""
    from ript.algos.tiny_pi0 import TinyPI0Spec

    t = cfg.policy.tiny
    return TinyPI0Spec(
        width=t.width, depth=t.depth, mlp_dim=2 * t.width, vision_width=t.vision_width, vision_depth=t.vision_layers,
        vision_mlp_dim=2 * t.vision_width, patch_size=t.patch_size,
    )


def check_trained_camera_size(cfg: RIPTConfig, path: Path) -> None:
    """A checkpoint cloned by bc_pretrain saw one rendering size: a different env.camera_size changes every pixel."""
    info = path / "bc_config.json"
    if cfg.env.kind != "libero" or not info.is_file():
        return
    trained = json.loads(info.read_text()).get("camera_size")
    if trained is not None and int(trained) != cfg.env.camera_size:
        raise ConfigError(f"env.camera_size={cfg.env.camera_size} but {path.name} was trained on {trained} px renders: set env.camera_size={trained}")


def policy_image_size(policy: FlowMatchingPolicy) -> int:
    """Side of the images the policy consumes (the env transforms resize to it, not to 224, when smaller)."""
    config = getattr(getattr(policy, "policy", None), "config", None)
    res = getattr(config, "image_resolution", None)
    return int(res[0]) if res else 224


# --------------------------------------------------------------------------- env


def make_env(cfg: RIPTConfig, policy: FlowMatchingPolicy, *, num_envs: int | None = None, seed: int = 0) -> EnvBase:
    """The (batched) env the policy acts in: ToyVLAEnv with contexts, or LIBERO + PI0 transforms."""
    n = num_envs or cfg.env.num_envs
    if cfg.env.kind == "toy":
        from .toy_env import make_context_toy_env

        env = make_context_toy_env(
            n,
            n_action_steps=cfg.policy.n_action_steps,
            max_steps=cfg.env.toy_max_steps,
            action_dim=cfg.env.toy_action_dim,
            success_steps=cfg.env.toy_success_steps,
            success_tol=cfg.env.toy_success_tol,
            parallel=cfg.env.toy_parallel,
        )
        env.start()
        return env
    from ript.envs import NormStats, make_libero_env, make_pi0_transforms

    if cfg.policy.kind == "pi0" and getattr(policy, "dataset_stats", None) and cfg.policy.path:
        norm = NormStats.from_lerobot_checkpoint(resolve_repo_path(cfg.policy.path))
    else:  # a tiny or MLP policy trained from scratch: identity statistics
        norm = NormStats.identity(LIBERO_STATE_DIM, LIBERO_ACTION_DIM)
        if cfg.policy.kind == "pi0":  # saved with every checkpoint, so eval_libero and resume find them
            policy.dataset_stats = norm.lerobot_stats()
    tokenizer = getattr(policy, "tokenizer", None)
    max_len = getattr(getattr(getattr(policy, "policy", None), "config", None), "tokenizer_max_length", 48)
    transforms = make_pi0_transforms(norm, image_size=policy_image_size(policy), tokenizer=tokenizer, tokenizer_max_length=max_len)
    workers = worker_layout(cfg, n).worker_tasks
    env = make_libero_env(
        workers[0].suite,
        [w.task_id for w in workers],
        suites=[w.suite for w in workers],
        num_envs=n,
        transforms=transforms,
        seed=seed,
        action_chunk=cfg.policy.n_action_steps,
        camera_size=cfg.env.camera_size,
        max_steps=cfg.env.max_steps,
        hard_reset_every=cfg.env.hard_reset_every or None,
        init_state_mode="fixed",
        init_state_id=min(cfg.env.train_init_states),
        fixture_placement=cfg.env.fixture_placement,
        render_threads=cfg.env.render_threads,
        scene_seed=cfg.train.seed,  # not `seed`: ranks and env rebuilds offset that one, a context's scene must not move
    )
    if hasattr(env, "start") and getattr(env, "is_closed", False):
        env.start()
    return env


# --------------------------------------------------------------------------- training parts


def available_cores() -> int:
    """CPU cores this process may use (its affinity), capped by OMP_NUM_THREADS when set (torchrun sets 1 per rank)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cap = os.environ.get("OMP_NUM_THREADS", "")
    return max(1, min(cores, int(cap))) if cap.isdigit() and int(cap) > 0 else cores


def phase_threads(cfg: RIPTConfig) -> tuple[int, int]:
    """Torch threads for (collection, update): while collecting, env workers in their own processes hold one core each.

    The workers wait while the policy updates, so the update takes every core (`benchmarks/update_threads.py`).
    """
    cores = available_cores()
    worker_processes = cfg.env.num_envs if cfg.env.num_envs > 1 and (cfg.env.kind == "libero" or cfg.env.toy_parallel) else 0
    collect = cfg.train.collect_threads or max(1, cores - worker_processes)
    return collect, cfg.train.update_threads or cores


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with `n` torch intra-op threads, then restore the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def batch_decisions(cfg: RIPTConfig) -> int:
    """Decision steps per worker in one collector batch (env.batch_decisions, at most an episode's)."""
    return min(cfg.env.batch_decisions or max_decision_steps(cfg), max_decision_steps(cfg))


def make_collector(env: EnvBase, policy: torch.nn.Module, cfg: RIPTConfig) -> Collector:
    """One torchrl Collector kept for the whole run; short batches, so a collection stops soon after its last group."""
    frames = env.batch_size.numel() * batch_decisions(cfg)
    return Collector(env, policy, frames_per_batch=frames, total_frames=-1, auto_register_policy_transforms=False)


def make_group_collector(source: EpisodeSource, cfg: RIPTConfig) -> GroupCollector:
    """The group collector over `source`'s env and Collector, with the run's worker layout."""
    layout = worker_layout(cfg)
    return GroupCollector(source, worker_options=layout.worker_options, env_task_ids=layout.env_task_ids,
                          batches_per_episode=math.ceil(max_decision_steps(cfg) / batch_decisions(cfg)))


def make_loss(cfg: RIPTConfig, policy: FlowMatchingPolicy, *, sync_across_ranks: bool = False) -> RIPTCFGLoss:
    """RIPTCFGLoss as configured; `sync_across_ranks` (DDP) makes its batch statistics global."""
    a = cfg.algo
    # the anchor's reference is the policy as built, before any resume: always the run's starting point
    reference = copy.deepcopy(policy) if a.anchor_coef > 0 else None
    return RIPTCFGLoss(
        policy, mode=a.mode, temperature=a.weight_temperature, w_max=a.weight_clip, positive_only=a.positive_only, p_uncond=a.p_uncond, sync_across_ranks=sync_across_ranks,
        reference=reference, anchor_coef=a.anchor_coef, anchor_num_steps=a.target_steps or None,
    )


def wrap_ddp(loss_module: RIPTCFGLoss, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around the loss module (it calls the policy, so DDP's hooks see every use).

    find_unused_parameters=False, explicitly: every trainable parameter must get a
    gradient in every backward. PI0Actor freezes the parameters PI0's action loss can
    structurally never reach (the VLM's last-layer query/output/MLP, final norm, LM
    heads), and a CFG label embedding is only reachable in `cfg` mode, so in
    `weighted` mode it is frozen here (it would get no gradient anyway).
    tests/recipes/test_ddp.py checks that every trainable parameter gets a gradient.
    broadcast_buffers=False: the policies' buffers are constants (no running stats),
    so re-broadcasting them every forward would only cost time.
    """
    from torch.nn.parallel import DistributedDataParallel

    if not loss_module.sync_across_ranks:
        raise ValueError("wrap_ddp needs a loss built with sync_across_ranks=True (global advantage statistics): use make_loss(..., sync_across_ranks=True)")
    label_embed = getattr(loss_module.policy, "label_embed", None)
    if loss_module.mode == "weighted" and label_embed is not None:
        label_embed.requires_grad_(False)
    return DistributedDataParallel(
        loss_module,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=False,
        broadcast_buffers=False,
    )


def expected_optimizer_steps(cfg: RIPTConfig) -> int:
    """An upper estimate of optimizer steps in the run (the cosine schedule's horizon)."""
    steps = cfg.algo.target_groups * cfg.algo.group_size * max_decision_steps(cfg)
    per_epoch = math.ceil(math.ceil(steps / cfg.optim.minibatch_size) / cfg.optim.grad_accum_steps)
    return max(1, cfg.train.iterations * cfg.optim.epochs * per_epoch)


@dataclass
class Optimization:
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None


def make_optimization(cfg: RIPTConfig, policy: FlowMatchingPolicy, device: torch.device) -> Optimization:
    """Optimizer, LR schedule (sized to the run's optimizer steps) and AMP scaler, built together from one config."""
    o = cfg.optim
    optimizer = make_optimizer(policy.parameters(), o.lr, o.weight_decay, o.betas)
    scheduler = make_scheduler(
        optimizer, schedule=o.schedule, warmup_steps=o.warmup_steps, total_steps=expected_optimizer_steps(cfg),
        min_lr_ratio=o.min_lr_ratio, decay_steps=o.decay_steps,
    )
    return Optimization(optimizer, scheduler, make_grad_scaler(cfg.amp, device))


# --------------------------------------------------------------------------- stored data


def stored_keys(policy: FlowMatchingPolicy, data: TensorDictBase) -> list[Any]:
    """What the update needs from a decision step: the policy's inputs, the chunk, the advantage."""
    reads = getattr(policy, "obs_keys", None) or policy.in_keys  # the MLP policy names its entries in obs_keys
    wanted: list[Any] = [k if isinstance(k, str) else tuple(k) for k in reads if k != "task"]
    if ("observation", "language_tokens") in data.keys(include_nested=True):
        wanted += [("observation", "language_tokens"), ("observation", "language_attention_mask")]
    elif "task" in policy.in_keys:
        wanted.append("task")
    wanted += ["action_chunk", "advantage", "episode_return", "informative", "task_index"]
    if "action_mask" in data.keys():
        wanted.append("action_mask")
    wanted.append("action_noise")  # only when the policy records it (relabel_chunks)
    present = set(data.keys(include_nested=True))
    return [k for k in dict.fromkeys(wanted) if k in present]
