"""Typed configuration for the RIPT-CFG recipes: dataclass schema, YAML configs, CLI.

Plain OmegaConf structured configs (no Hydra runtime), so `python recipes/ript_cfg.py`
and `torchrun ... recipes/ript_cfg.py` parse arguments the same way:

    python recipes/ript_cfg.py [--config-path DIR] [--config-name NAME] [key.sub=value ...]

A YAML file in configs/ may name a parent with `defaults: [parent]` (or
`base: parent`); the child's keys override the parent's. Everything is validated
before any work starts: a bad config raises `ConfigError` with ONE line that names
the fix, and `main_config` turns that into exit code 2 without a traceback (unless
`debug=true`).
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple, NoReturn, Optional, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
DEFAULT_CONFIG_NAME = "quick_test"  # the main job: one LIBERO task, tiny PI0, < 10 min on 2 CPU cores


# what a real PI0 checkpoint directory holds (lerobot's save_pretrained plus the prompt tokenizer)
CHECKPOINT_LAYOUT = ("config.json, model.safetensors, policy_preprocessor.json + its normalizer .safetensors "
                     "(and tokenizer/ inside it, or policy.tokenizer_path)")


class ConfigError(ValueError):
    """A configuration problem; the message is one line that names the fix."""


# --------------------------------------------------------------------------- schema


@dataclass
class EnvConfig:
    kind: str = "libero"  # libero | toy (torchrl ToyVLAEnv, for fast tests)
    suite: str = "libero_object"
    tasks: list[Any] = field(default_factory=lambda: [1])  # task ids in env.suite, or "suite:id" across suites (e.g. "libero_goal:8")
    camera_size: int = 128  # rendered camera side (PI0 transforms resize-with-pad to 224)
    num_envs: int = 2  # parallel env workers
    max_steps: Optional[int] = None  # simulator steps per episode; None = openpi's per-suite value
    hard_reset_every: int = 0  # rebuild the simulator every N resets (0 = never)
    batch_decisions: Optional[int] = 8  # decision steps per worker in a collector batch: collection stops within this many of its last group (null: an episode's)
    render_threads: Optional[int] = None  # llvmpipe threads per env worker (CPU rendering, LP_NUM_THREADS); None: Mesa's default (all cores)
    step_timeout_s: float = 300.0  # a worker with no env progress for this long is declared hung, killed and the env rebuilt
    max_restarts: int = 5  # env rebuilds after worker deaths/hangs allowed per run before it stops
    train_init_states: list[int] = field(default_factory=lambda: list(range(0, 40)))  # contexts are drawn from these
    fixture_placement: str = "pinned"  # pinned: a (task, init state) context is one scene, fixtures included (a group compares one scene) | upstream: LIBERO's per-reset fixture jitter
    # toy env only (tracking mode of torchrl's ToyVLAEnv)
    toy_action_dim: int = 2
    toy_success_steps: int = 2
    toy_success_tol: float = 0.3
    toy_max_steps: int = 8
    toy_parallel: bool = False  # toy workers in processes (ParallelEnv) instead of in-process (SerialEnv)
    toy_bc_steps: int = 0  # > 0: behaviour-clone the fresh policy on noisy oracle chunks first (a weak, learnable start)
    toy_bc_noise: float = 0.45  # std of the noise added to the oracle's actions in those demos
    toy_bc_lr: float = 3e-3
    toy_bc_batch: int = 256


@dataclass
class TinyPolicyConfig:
    width: int = 64  # Gemma width of both experts
    depth: int = 2  # Gemma layers of both experts (the MLP policy's hidden layers)
    vision_width: int = 64
    vision_layers: int = 2
    image_size: int = 64  # SigLIP input side
    patch_size: int = 16
    hidden: int = 64  # MLP policy hidden width


@dataclass
class PolicyConfig:
    kind: str = "pi0"  # pi0 | mlp
    path: Optional[str] = None  # local lerobot PI0 checkpoint dir; None = tiny, randomly initialised
    tiny: TinyPolicyConfig = field(default_factory=TinyPolicyConfig)
    chunk_size: int = 10
    n_action_steps: int = 5
    num_inference_steps: int = 5  # flow-matching integration steps when sampling
    tokenizer_path: Optional[str] = None  # local tokenizer; None = a locally built tiny tokenizer
    cfg_conditioning: bool = False  # add the CFGRL optimality embedding (needed by algo.mode=cfg)
    noise_scale: Optional[float] = None  # acting noise multiplier (a temperature); None = the checkpoint's, 1.0 for a fresh policy
    freeze: str = "none"  # PI0 part left as loaded: vision (image encoder) | trunk (whole VLM: only the action expert trains) | none
    path_required: bool = False  # true for configs meant for a real checkpoint: refuse to fall back to a random tiny PI0
    gradient_checkpointing: bool = False  # PI0: recompute activations in backward (lerobot's switch; active in train mode, i.e. updates only)


@dataclass
class AlgoConfig:
    mode: str = "weighted"  # weighted | cfg
    group_size: int = 4  # K rollouts per (task, init state) context
    contexts_per_iteration: int = 2  # contexts drawn per collection round
    target_groups: int = 2  # informative groups wanted per iteration
    max_context_draws: int = 8  # cap on contexts tried per iteration (dynamic sampling)
    weight_temperature: float = 1.0
    weight_clip: float = 5.0
    positive_only: bool = False  # weighted mode: train on steps with a positive advantage only (filtered self-imitation)
    p_uncond: float = 0.1  # CFG: probability of dropping the optimality label
    guidance: float = 1.5  # CFG: w in v = v_u + w (v_pos - v_u) when sampling
    anchor_coef: float = 0.0  # > 0: also fit the start policy's samples (frozen copy; a KL-to-reference term, one more policy in memory)
    anchor_all_states: bool = False  # anchor on every collected step, also of all-fail/all-success groups (needs anchor_coef > 0)
    target_steps: int = 0  # > 0: train on the acted noise re-integrated with this many Euler steps (relabel_chunks); 0: on the acted chunks
    keep_spread: bool = False  # after every update, rescale the acting noise so the action spread stays at its first-iteration value (SpreadKeeper)
    ema_decay: float = 0.0  # > 0: a copy trains and the acting, evaluated and saved policy is its weight average (0.99 in benchmarks/learning_libero.py; one more policy in memory); 0 = acts as trained
    buffer_iterations: int = 1  # train on the kept steps of the last N iterations that kept any (1 = on-policy; the window restarts empty on resume)
    balance_tasks: bool = False  # give every task's steps in that window the same share (upsampled with replacement: balance_by_key on task_index)
    demo_replay: int = 0  # > 0: replay this many expert demos per task beside every iteration's own steps (advantage +1), from cloned init states only
    demo_dataset: Optional[str] = None  # LeRobotDataset of those demos (recipes/collect_demos.py); None = the one policy.path was cloned on


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    epochs: int = 1
    minibatch_size: int = 8
    grad_accum_steps: int = 1  # minibatches per optimizer step; the step equals one on their union (weights' statistics included)
    max_grad_norm: float = 1.0  # the step's gradient is clipped to this norm (optim/grad_norm_preclip logs it before clipping)
    schedule: str = "constant"  # constant | cosine | wsd (constant, then linear decay over the last decay_steps)
    warmup_steps: int = 0  # optimizer steps of linear warm-up
    decay_steps: int = 0  # wsd: optimizer steps of the final linear decay
    min_lr_ratio: float = 0.1  # cosine / wsd floor as a fraction of lr
    max_consecutive_nonfinite: int = 10  # skipped (NaN/inf) update steps in a row before the run stops


@dataclass
class TrainConfig:
    iterations: int = 2
    max_minutes: Optional[float] = None  # stop before an iteration of average length would take collection + update time past this
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    collect_threads: Optional[int] = None  # torch threads while collecting and evaluating; None: cores minus env worker processes (>= 1)
    update_threads: Optional[int] = None  # torch threads while updating (the env workers wait meanwhile); None: all cores


@dataclass
class EvalConfig:
    every: int = 1  # iterations between evaluations
    init_states: list[int] = field(default_factory=lambda: [40, 41])  # held out from env.train_init_states
    episodes: int = 2  # episodes per (task, init state) ... capped by len(init_states)
    at_start: bool = False  # also evaluate before the first update (the start of a learning curve)
    fixture_placement: str = "upstream"  # upstream: LIBERO's per-reset fixture jitter, the published protocol | pinned: one scene per context, as in training


@dataclass
class CheckpointConfig:
    every: int = 1  # iterations between checkpoints (the last iteration always saves)
    keep_last: int = 2  # periodic checkpoints kept; best is always kept
    resume: Optional[str] = None  # null | auto (latest in logging.output_dir) | <checkpoint or output dir>


@dataclass
class LoggingConfig:
    output_dir: Optional[str] = None  # None = runs/<config-name>-<timestamp>
    csv: bool = True
    wandb: str = "disabled"  # online | offline | disabled
    project: str = "ript"
    run_name: Optional[str] = None
    video_every: int = 1  # iterations between rollout videos (0 = never)
    progress: bool = True  # tqdm bars for rollouts and updates


@dataclass
class EarlyStoppingConfig:
    patience: int = 0  # evaluations without improvement before stopping (0 = off)
    min_delta: float = 0.0


@dataclass
class SamplingConfig:
    strategy: str = "uniform"  # uniform | balanced (every task equally often in each round) | curriculum
    success_rate_target: float = 0.7  # curriculum: favour contexts whose success rate is near this


@dataclass
class PreflightConfig:
    min_free_gb: float = 1.0  # free disk space the output directory needs before the run starts


@dataclass
class HealthConfig:
    """Checks of a running job (recipes/training/health.py); each names its likely fix."""

    every: int = 1  # run the checks every N iterations (system metrics are logged every iteration)
    action: str = "warn"  # warn: console line + health.json | stop: also checkpoint and stop the run
    min_history: int = 5  # iterations of simulator steps/s history before slow_env judges
    slow_ratio: float = 0.5  # slow_env: simulator steps/s below this x the run's median ...
    slow_iterations: int = 3  # ... in each of the last N iterations
    window: int = 10  # iterations over which rss_growth, gpu_growth and env_restarts are measured
    rss_growth: float = 0.25  # rss_growth: relative RSS growth over the window
    gpu_growth: float = 0.25  # gpu_growth: relative growth of reserved GPU memory over the window
    gpu_capacity: float = 0.95  # gpu_full: reserved / total GPU memory
    disk_checkpoints: float = 3.0  # disk_low: free disk below this many checkpoints of the last one's size
    nonfinite_steps: int = 3  # nonfinite: skipped non-finite update steps (streak or in one iteration)
    no_groups_iterations: int = 3  # no_groups: iterations in a row without an informative group
    success_drop: float = 0.3  # success_drop: held-out success this far below the best so far
    env_restarts: int = 2  # env_restarts: env rebuilds within the window


@dataclass
class DistributedConfig:
    backend: str = "auto"  # auto (nccl on cuda, gloo on cpu) | nccl | gloo
    timeout_s: int = 1800


@dataclass
class RIPTConfig:
    env: EnvConfig = field(default_factory=EnvConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    amp: str = "off"  # off | bf16 | fp16 (bf16 autocast on CUDA or CPU; fp16 autocast + GradScaler, CUDA only)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    preflight: PreflightConfig = field(default_factory=PreflightConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    config_name: str = DEFAULT_CONFIG_NAME  # set by the loader
    debug: bool = False  # full tracebacks on config errors


# --------------------------------------------------------------------------- loading

_SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
_CHOICES: dict[str, tuple[str, ...]] = {
    "env.kind": ("libero", "toy"),
    "env.suite": _SUITES,
    "env.fixture_placement": ("pinned", "upstream"),
    "eval.fixture_placement": ("upstream", "pinned"),
    "policy.kind": ("pi0", "mlp"),
    "policy.freeze": ("none", "vision", "trunk"),  # PI0Actor.FREEZE_PARTS (a test keeps them equal; lerobot stays unimported here)
    "algo.mode": ("weighted", "cfg"),
    "optim.schedule": ("constant", "cosine", "wsd"),
    "amp": ("off", "bf16", "fp16"),
    "logging.wandb": ("online", "offline", "disabled"),
    "sampling.strategy": ("uniform", "balanced", "curriculum"),
    "distributed.backend": ("auto", "nccl", "gloo"),
    "health.action": ("warn", "stop"),
}


def available_configs(config_dir: Path = CONFIG_DIR) -> list[str]:
    """Names accepted by --config-name (tune_*.yaml are study spaces for recipes/tune.py, not recipe configs)."""
    return sorted(p.stem for p in config_dir.glob("*.yaml") if not p.stem.startswith("tune_"))


def _load_yaml_chain(name: str, config_dir: Path, seen: tuple[str, ...] = ()) -> DictConfig:
    """Load <config_dir>/<name>.yaml (else configs/<name>.yaml) merged over its parents (`defaults: [...]` or `base: ...`).

    Falling back to configs/ lets a YAML saved elsewhere (a tuning study's best.yaml) name a shipped parent.
    """
    path = next((d / f"{name}.yaml" for d in dict.fromkeys((config_dir, CONFIG_DIR)) if (d / f"{name}.yaml").is_file()), config_dir / f"{name}.yaml")
    if not path.is_file():
        raise ConfigError(f"unknown config '{name}': pick --config-name from {available_configs(config_dir)}")
    if name in seen:
        raise ConfigError(f"config inheritance loops through '{name}': fix the defaults/base key of {path}")
    try:
        node = OmegaConf.load(path)
    except Exception as e:  # yaml syntax
        raise ConfigError(f"{path} is not valid YAML ({str(e).splitlines()[0]}): fix the file") from e
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path} must hold a mapping of sections: fix the file")
    parents: list[str] = []
    for key in ("defaults", "base"):
        if key in node:
            value = node.pop(key)
            parents += [str(v) for v in value] if isinstance(value, ListConfig) else [str(value)]
    merged = OmegaConf.create({})
    for parent in parents:
        merged = OmegaConf.merge(merged, _load_yaml_chain(parent, config_dir, seen + (name,)))
    return OmegaConf.merge(merged, node)


def _normalise_yaml_bools(node: DictConfig) -> None:
    """YAML reads `off` as False: map amp=False back to the string "off"."""
    if "amp" in node and isinstance(node["amp"], bool) and node["amp"] is False:
        node["amp"] = "off"


def one_line_error(e: OmegaConfBaseException, schema: str = "see recipes/training/config.py for the schema",
                   fix: str = "fix the override or YAML") -> str:
    """OmegaConf's multi-line error as the one line a user acts on: the key, what is wrong, the fix."""
    msg = str(e).splitlines()[0]
    key = getattr(e, "full_key", None)
    if "not in" in msg and key:
        return f"unknown key '{key}': remove it or fix its spelling ({schema})"
    if key:
        return f"bad value for '{key}': {msg}; {fix}"
    return f"{msg}; {fix}"


def exit_config_error(e: ConfigError) -> NoReturn:
    """Every entry point reports a fixable config problem the same way: one stderr line, exit code 2."""
    print(f"config error: {e}", file=sys.stderr)
    raise SystemExit(2) from None


def load_config(
    config_name: str = DEFAULT_CONFIG_NAME,
    overrides: list[str] | tuple[str, ...] = (),
    config_dir: Path | str = CONFIG_DIR,
) -> RIPTConfig:
    """Schema <- YAML chain <- dotlist overrides, then `validate`. Raises ConfigError."""
    config_dir = Path(config_dir)
    schema = OmegaConf.structured(RIPTConfig)
    yaml_node = _load_yaml_chain(config_name, config_dir)
    _normalise_yaml_bools(yaml_node)
    for o in overrides:
        if "=" not in o or o.startswith("="):
            raise ConfigError(f"override '{o}' is not key=value: write it like optim.lr=3e-5")
    try:
        cli = OmegaConf.from_dotlist(list(overrides))
    except Exception as e:
        raise ConfigError(f"cannot parse overrides {list(overrides)} ({str(e).splitlines()[0]}): write them as key=value") from e
    _normalise_yaml_bools(cli)
    try:
        merged = OmegaConf.merge(schema, yaml_node, cli)
        merged.config_name = config_name
        cfg: RIPTConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as e:
        raise ConfigError(one_line_error(e)) from e
    cfg.policy.path = resolve_repo_path(cfg.policy.path)
    validate(cfg)
    return cfg


def resolve_repo_path(path: Optional[str]) -> Optional[str]:
    """A relative path that does not exist from the cwd but does from the repo root, made absolute.

    So committed assets (configs/pretrained/...) named relatively in a YAML work from any cwd.
    """
    if path is None or Path(path).expanduser().is_absolute() or Path(path).exists():
        return path
    candidate = CONFIG_DIR.parent / path
    return str(candidate) if candidate.exists() else path


def _get(cfg: RIPTConfig, dotted: str) -> Any:
    obj: Any = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def validate(cfg: RIPTConfig) -> None:
    """Check choices and impossible combinations; raise ConfigError with one line naming the fix."""
    for key, choices in _CHOICES.items():
        value = _get(cfg, key)
        if value not in choices:
            raise ConfigError(f"{key}={value!r} is not one of {list(choices)}: set {key}=<one of them>")

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(msg)

    e, p, a, o, t = cfg.env, cfg.policy, cfg.algo, cfg.optim, cfg.train
    need(len(e.tasks) > 0, "env.tasks is empty: list at least one task index, e.g. env.tasks=[0]")
    specs = task_specs(cfg)  # ConfigError on a malformed entry
    need(len({s[:2] for s in specs}) == len(specs), f"env.tasks={list(e.tasks)} names a task twice: list each task once")
    suites = sorted({s.suite for s in specs})
    need(e.num_envs >= len(suites), f"env.tasks spans {len(suites)} suites {suites} but env.num_envs={e.num_envs}: "
         f"set env.num_envs={len(suites)} or more (a worker runs one suite)")
    need(e.num_envs >= 1, f"env.num_envs={e.num_envs} must be >= 1: set env.num_envs=1 or more")
    need(e.camera_size >= 16, f"env.camera_size={e.camera_size} is too small: use 16 or more (128 or 256 typical)")
    need(e.max_steps is None or e.max_steps >= 1, "env.max_steps must be >= 1 or null (openpi's per-suite value)")
    need(e.hard_reset_every >= 0, "env.hard_reset_every must be >= 0 (0 = never)")
    need(0 < e.toy_success_tol <= 0.5, f"env.toy_success_tol={e.toy_success_tol} must be in (0, 0.5] (targets lie in [-0.5, 0.5])")
    need(e.toy_success_steps >= 1 and e.toy_max_steps >= 1 and e.toy_action_dim >= 1, "env.toy_success_steps, env.toy_max_steps and env.toy_action_dim must be >= 1")
    need(e.step_timeout_s > 0, f"env.step_timeout_s={e.step_timeout_s} must be > 0: seconds without env progress before a worker counts as hung")
    need(e.max_restarts >= 0, f"env.max_restarts={e.max_restarts} must be >= 0")
    need(len(e.train_init_states) > 0, "env.train_init_states is empty: list the init-state ids to train on")
    held = set(cfg.eval.init_states) & set(e.train_init_states)
    need(not held, f"eval.init_states {sorted(held)} are also in env.train_init_states: evaluate on held-out init states only")
    need(p.chunk_size >= 1, f"policy.chunk_size={p.chunk_size} must be >= 1")
    need(
        1 <= p.n_action_steps <= p.chunk_size,
        f"policy.n_action_steps={p.n_action_steps} must be in [1, policy.chunk_size={p.chunk_size}]: lower n_action_steps or raise chunk_size",
    )
    need(p.num_inference_steps >= 1, "policy.num_inference_steps must be >= 1")
    need(a.group_size >= 2, f"algo.group_size={a.group_size} < 2: leave-one-out advantages need groups of 2 or more rollouts")
    need(a.contexts_per_iteration >= 1, "algo.contexts_per_iteration must be >= 1")
    need(a.target_groups >= 1, "algo.target_groups must be >= 1")
    need(
        a.max_context_draws >= a.target_groups,
        f"algo.max_context_draws={a.max_context_draws} < algo.target_groups={a.target_groups}: raise max_context_draws",
    )
    need(a.weight_temperature > 0, "algo.weight_temperature must be > 0")
    need(a.weight_clip >= 1, f"algo.weight_clip={a.weight_clip} must be >= 1 (the mean self-normalised weight is 1)")
    need(a.anchor_coef >= 0, f"algo.anchor_coef={a.anchor_coef} must be >= 0 (0 turns the reference anchor off)")
    need(not a.anchor_all_states or a.anchor_coef > 0, "algo.anchor_all_states=true needs algo.anchor_coef > 0 (it widens the anchor)")
    need(a.target_steps >= 0, f"algo.target_steps={a.target_steps} must be >= 0 (0 trains on the acted chunks)")
    need(not (a.positive_only and a.mode != "weighted"), "algo.positive_only=true applies to algo.mode=weighted only")
    need(0.0 <= a.ema_decay < 1.0, f"algo.ema_decay={a.ema_decay} must be in [0, 1) (0 acts with the trained weights; 0.99 typical)")
    need(a.buffer_iterations >= 1, f"algo.buffer_iterations={a.buffer_iterations} must be >= 1 (1 trains on the latest iteration's steps only)")
    need(0.0 <= a.p_uncond < 1.0, f"algo.p_uncond={a.p_uncond} must be in [0, 1)")
    need(not (a.mode == "cfg" and p.kind == "pi0" and not p.cfg_conditioning),
         "algo.mode=cfg needs an optimality-conditioned policy: set policy.cfg_conditioning=true")
    need(p.freeze == "none" or p.kind == "pi0", f"policy.freeze={p.freeze} applies to policy.kind=pi0 only: set policy.freeze=none")
    need(p.noise_scale is None or p.noise_scale > 0,
         f"policy.noise_scale={p.noise_scale} must be > 0 (1.0 samples the policy as trained)")
    need(o.lr > 0, f"optim.lr={o.lr} must be > 0")
    need(o.weight_decay >= 0, "optim.weight_decay must be >= 0")
    need(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas must be two numbers in [0, 1), e.g. [0.9,0.95]")
    need(o.epochs >= 1, "optim.epochs must be >= 1")
    need(o.minibatch_size >= 1, "optim.minibatch_size must be >= 1")
    need(o.grad_accum_steps >= 1, "optim.grad_accum_steps must be >= 1")
    need(o.max_grad_norm > 0, "optim.max_grad_norm must be > 0")
    need(o.warmup_steps >= 0, "optim.warmup_steps must be >= 0")
    need(o.decay_steps >= 0, "optim.decay_steps must be >= 0")
    need(o.schedule != "wsd" or o.decay_steps > 0, "optim.schedule=wsd needs optim.decay_steps > 0 (the steps of its final decay)")
    need(0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio must be in [0, 1]")
    need(o.max_consecutive_nonfinite >= 1, f"optim.max_consecutive_nonfinite={o.max_consecutive_nonfinite} must be >= 1")
    # The smallest batch an iteration can yield is target_groups full groups of decision steps (>= 1 step each).
    min_batch = a.target_groups * a.group_size
    need(
        o.minibatch_size <= min_batch,
        f"optim.minibatch_size={o.minibatch_size} > the smallest batch (algo.target_groups*algo.group_size={min_batch} decision steps): lower optim.minibatch_size",
    )
    need(t.iterations >= 1, f"train.iterations={t.iterations} must be >= 1")
    need(t.device in ("auto", "cpu", "cuda") or t.device.startswith("cuda:"), f"train.device={t.device!r}: use auto, cpu, cuda or cuda:N")
    need(cfg.eval.every > 0, f"eval.every={cfg.eval.every} must be > 0: evaluate every N >= 1 iterations")
    need(cfg.eval.episodes >= 1, "eval.episodes must be >= 1")
    need(len(cfg.eval.init_states) > 0, "eval.init_states is empty: list held-out init-state ids")
    need(cfg.checkpoint.every > 0, f"checkpoint.every={cfg.checkpoint.every} must be > 0")
    need(cfg.checkpoint.keep_last >= 1, "checkpoint.keep_last must be >= 1")
    need(cfg.logging.video_every >= 0, "logging.video_every must be >= 0 (0 = no videos)")
    need(cfg.early_stopping.patience >= 0, "early_stopping.patience must be >= 0 (0 = off)")
    need(cfg.early_stopping.min_delta >= 0, "early_stopping.min_delta must be >= 0")
    need(0 < cfg.sampling.success_rate_target < 1, "sampling.success_rate_target must be in (0, 1)")
    need(cfg.preflight.min_free_gb >= 0, f"preflight.min_free_gb={cfg.preflight.min_free_gb} must be >= 0")
    need(cfg.distributed.timeout_s > 0, "distributed.timeout_s must be > 0")
    need(t.max_minutes is None or t.max_minutes > 0, f"train.max_minutes={t.max_minutes} must be > 0 or null (no time budget)")
    for key, n in (("train.collect_threads", t.collect_threads), ("train.update_threads", t.update_threads), ("env.render_threads", e.render_threads),
                   ("env.batch_decisions", e.batch_decisions)):
        need(n is None or n >= 1, f"{key}={n} must be >= 1 or null (automatic)")
    need(a.demo_replay >= 0, f"algo.demo_replay={a.demo_replay} must be >= 0 (0 trains on the policy's own rollouts only)")
    need(not a.demo_replay or (e.kind == "libero" and p.kind == "pi0" and p.path is not None),
         "algo.demo_replay > 0 needs env.kind=libero and a cloned PI0 checkpoint in policy.path: set algo.demo_replay=0")
    need(not (a.demo_replay and a.target_steps), "algo.demo_replay cannot be combined with algo.target_steps (demos have no acting noise): set one to 0")
    need(e.toy_bc_steps >= 0 and e.toy_bc_noise >= 0 and e.toy_bc_lr > 0 and e.toy_bc_batch >= 1,
         "env.toy_bc_steps/toy_bc_noise must be >= 0, env.toy_bc_lr > 0 and env.toy_bc_batch >= 1")
    need(not e.toy_bc_steps or e.kind == "toy", "env.toy_bc_steps applies to env.kind=toy only: set env.toy_bc_steps=0")
    need(not (cfg.amp == "fp16" and t.device == "cpu"), "amp=fp16 needs CUDA: set amp=off on CPU (or bf16 on a GPU)")
    need(not (p.path_required and p.kind == "pi0" and p.path is None), f"policy.path is not set and config '{cfg.config_name}' trains a real checkpoint: set "
         f"policy.path=<local lerobot PI0 checkpoint dir with {CHECKPOINT_LAYOUT}>")
    need(not p.gradient_checkpointing or p.kind == "pi0", "policy.gradient_checkpointing=true applies to policy.kind=pi0 only: set it to false")
    validate_health(cfg.health)


def validate_health(h: HealthConfig) -> None:
    """The health thresholds: counts >= 1, fractions in range; one line naming the key."""
    for key in ("every", "min_history", "slow_iterations", "nonfinite_steps", "no_groups_iterations", "env_restarts"):
        if getattr(h, key) < 1:
            raise ConfigError(f"health.{key}={getattr(h, key)} must be >= 1: set it to 1 or more")
    for key in ("slow_ratio", "gpu_capacity", "success_drop"):
        if not 0 < getattr(h, key) <= 1:
            raise ConfigError(f"health.{key}={getattr(h, key)} must be in (0, 1]: set a fraction such as 0.5")
    if h.window < 2:
        raise ConfigError(f"health.window={h.window} must be >= 2 (growth needs two iterations): set health.window=10")
    for key in ("rss_growth", "gpu_growth", "disk_checkpoints"):
        if getattr(h, key) <= 0:
            raise ConfigError(f"health.{key}={getattr(h, key)} must be > 0: set a positive threshold")


class TaskSpec(NamedTuple):
    """One task of a run: its suite, its id there, and the name its metrics carry."""

    suite: str
    task_id: int
    label: str


def task_specs(cfg: RIPTConfig) -> list[TaskSpec]:
    """env.tasks resolved: an int is a task of env.suite ("task<id>" in metric names), "suite:id" names its suite."""
    specs = []
    for entry in cfg.env.tasks:
        if isinstance(entry, str) and entry.strip().lstrip("-").isdigit():
            entry = int(entry)
        if isinstance(entry, int) and not isinstance(entry, bool):
            if entry < 0:
                raise ConfigError("env.tasks has a negative index: use task indices >= 0")
            suite = cfg.env.suite if cfg.env.kind == "libero" else "toy"
            specs.append(TaskSpec(suite, entry, f"task{entry}"))
            continue
        suite, sep, task = str(entry).partition(":")
        if cfg.env.kind != "libero" or not sep or suite not in _SUITES or not task.isdigit():
            raise ConfigError(f"env.tasks entry {entry!r} is not a task id or 'suite:id' with a LIBERO suite "
                              f"(e.g. libero_goal:8; suites {list(_SUITES)}): fix env.tasks")
        specs.append(TaskSpec(suite, int(task), f"{suite}:{int(task)}"))
    return specs


def to_yaml(cfg: RIPTConfig) -> str:
    """The resolved config as YAML (stored beside logs and in checkpoints)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: RIPTConfig) -> dict[str, Any]:
    """Plain containers, for loggers (wandb's run config) that take no dataclasses."""
    return dataclasses.asdict(cfg)


def parse_args(argv: list[str]) -> tuple[str, list[str], Optional[str]]:
    """Split `[--config-path DIR] [--config-name NAME] [key=value ...]` (also `--flag=value`, `-cn NAME`, `-cp DIR`).

    --config-path: the directory to read NAME.yaml from (e.g. a tuning study's best.yaml); parents
    named by `defaults:` are looked up there first, then in configs/. None means configs/.
    """
    name, overrides, path, i = DEFAULT_CONFIG_NAME, [], None, 0
    flags = {"--config-name": "name", "-cn": "name", "--config-path": "path", "-cp": "path"}
    while i < len(argv):
        arg = argv[i]
        flag, eq, inline = arg.partition("=")
        if flag in flags and (eq or i + 1 < len(argv)):
            value = inline if eq else argv[i + 1]
            i += 1 if eq else 2
            if flags[flag] == "name":
                name = value
            else:
                path = value
            continue
        if arg in flags:
            raise ConfigError(f"{arg} needs a value: e.g. {arg} {'quick_test' if flags[arg] == 'name' else 'runs/tune/toy'}")
        if arg in ("-h", "--help"):
            raise ConfigError(
                f"usage: [--config-path DIR] [--config-name NAME] [key.sub=value ...]; configs: {available_configs()}; schema: recipes/training/config.py"
            )
        if arg.startswith("-"):
            raise ConfigError(f"unknown flag '{arg}': only --config-name NAME, --config-path DIR and key=value overrides are accepted")
        overrides.append(arg)
        i += 1
    return name, overrides, path


T = TypeVar("T")


def main_config(argv: list[str] | None = None, config_dir: Path | str = CONFIG_DIR) -> RIPTConfig:
    """Parse the CLI into a validated config, or print one error line and exit with code 2."""
    argv = sys.argv[1:] if argv is None else argv
    debug = any(a.strip().lower() in ("debug=true", "debug=1") for a in argv)
    try:
        name, overrides, path = parse_args(argv)
        return load_config(name, overrides, config_dir if path is None else path)
    except ConfigError as e:
        if debug:
            raise
        exit_config_error(e)


def run_main(fn: Callable[[RIPTConfig], T], argv: list[str] | None = None) -> T:
    """Load the config and call `fn(cfg)`; errors the user can fix (ConfigError) exit 2 in one line."""
    cfg = main_config(argv)
    try:
        return fn(cfg)
    except ConfigError as e:
        if cfg.debug:
            raise
        exit_config_error(e)
