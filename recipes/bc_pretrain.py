"""Warm start for RIPT: behaviour-clone one tiny, language-conditioned PI0 on scripted demos.

RIPT learns only from groups whose rollouts disagree, so its starting policy must
sometimes succeed (roughly 20-60%). Real PI0 LIBERO weights cannot be downloaded here,
so this recipe builds one, reproducibly, on a CPU:

  1. demos: the LeRobotDataset written by `recipes/collect_demos.py` (scripted experts on
     several LIBERO tasks), read through lerobot's LeRobotDataset; each frame gets the next
     chunk_size actions and a mask of the steps past the episode end, exactly as lerobot's
     `delta_timestamps` / `action_is_pad` give them (lerobot 0.6.1's PI0 loss has no such
     mask: `per_sample_loss` applies it)
  2. norm stats: the dataset's own mean/std of the raw 8-dim state and 7-dim actions
  3. frames already hold what PI0 sees (images rotated and resize-with-padded by the PI0
     image transform); the state is normalised and padded, and each task's instruction
     tokenised, by the same transforms the RL env uses
  4. training: flow matching through `PI0Actor.per_sample_loss`; +-shift pixel random-shift
     augmentation; AdamW, warm-up then constant LR (a checkpoint after k steps equals a
     run with steps=k), and with decay_steps=N a linear decay to 0 over the last N steps
     (the run equals the constant one until the decay starts)
  5. evaluation per task on held-out init states every eval_every steps (the BC curve);
     a checkpoint is saved in lerobot format with its norm stats as lerobot processors at
     every evaluation, so `policy.path=<out>_step<k>` works in the RIPT recipe.

    python recipes/collect_demos.py out=data/scripted_libero
    python recipes/bc_pretrain.py dataset=data/scripted_libero out=runs/bc/tiny_pi0_libero
    python recipes/bc_pretrain.py dataset=data/scripted_libero steps=100 eval_init_states=[40,41] --dry-run

Settings are `key=value` over `BCConfig` (`-h` lists them; recipes/training/cli.py).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any

if __package__ in (None, ""):  # run as a script: make `ript` importable from a plain checkout too
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from tensordict import TensorDict

import ript.envs  # noqa: F401  (sets MUJOCO_GL before mujoco loads)
from ript.algos.pi0_actor import PI0Actor
from ript.algos.tiny_pi0 import TinyPI0Spec
from ript.envs import NormStats
from ript.envs import keys as K
from ript.envs.transforms import PI0StateTransform, PI0TokenizeTransform
from ript.recipes.collect_demos import ACTION_KEY, EPISODES_FILE, IMAGE_KEY, STATE_KEY, WRIST_KEY
from ript.recipes.training.cli import load_config_or_exit, run_cli
from ript.recipes.training.config import ConfigError
from ript.recipes.training.multitask import TaskWorkers
from ript.recipes.training.optim import WeightEMA, make_optimizer, make_scheduler

STATE_DIM, ACTION_DIM = 8, 7


@dataclass
class BCConfig:
    """Everything that defines the warm-start checkpoint (saved beside it as bc_config.json)."""

    dataset: str = "data/scripted_libero"  # root of the LeRobotDataset from collect_demos.py
    repo_id: str = "ript/scripted_libero"
    out: str = "runs/bc_pretrain/tiny_pi0_libero"
    demo_init_states: list[int] = field(default_factory=lambda: list(range(0, 40)))  # episodes used for training
    eval_init_states: list[int] = field(default_factory=lambda: list(range(40, 50)))  # held out, per task
    max_demos_per_task: int = 0  # 0 = every successful demo on demo_init_states
    task_max_demos: list[str] = field(default_factory=list)  # per-task caps, e.g. libero_goal:8=5 (overrides the one above)
    # tiny PI0
    width: int = 128
    depth: int = 4
    vision_width: int = 128
    vision_layers: int = 4
    patch_size: int = 16
    chunk_size: int = 10
    n_action_steps: int = 5
    num_inference_steps: int = 5
    # optimisation
    steps: int = 6000
    batch_size: int = 32
    lr: float = 3e-4
    warmup_steps: int = 100
    decay_steps: int = 0  # linear LR decay to 0 over the last N steps (0 = constant after warm-up)
    weight_decay: float = 1e-4
    shift_px: int = 6
    ema_decay: float = 0.0  # > 0: evaluate and save an exponential moving average of the weights (e.g. 0.995); 0 = the raw weights
    eval_every: int = 1000  # 0 = only at the end
    save_every: int = 0  # extra snapshots <out>_step<N> without evaluation (0 = none), to pick a start later
    seed: int = 0
    threads: int = 2


# --------------------------------------------------------------------------- demos


def demo_info(cfg: BCConfig) -> dict[str, Any]:
    """The dataset's collection settings and per-episode (task, init state) index."""
    root = Path(cfg.dataset)
    for name in ("demo_config.json", EPISODES_FILE):
        if not (root / name).is_file():
            raise FileNotFoundError(f"{root / name} missing: write the dataset with `python recipes/collect_demos.py out={root}`")
    return {"config": json.loads((root / "demo_config.json").read_text()),
            "episodes": json.loads((root / EPISODES_FILE).read_text())}


def demo_norm_stats(dataset: Any) -> NormStats:
    """The dataset's mean/std of the raw state and of the actions (lerobot computed them)."""
    stats = dataset.meta.stats
    floor = 1e-2  # near-constant dims (e.g. rotations a top-down expert rarely uses) stay well conditioned
    vec = lambda key, stat: torch.as_tensor(np.asarray(stats[key][stat]), dtype=torch.float32).flatten()  # noqa: E731
    return NormStats(
        state_mean=vec(STATE_KEY, "mean"), state_std=vec(STATE_KEY, "std").clamp_min(floor),
        action_mean=vec(ACTION_KEY, "mean"), action_std=vec(ACTION_KEY, "std").clamp_min(floor),
    )


def decode_images(column: Any) -> torch.Tensor:
    """A LeRobotDataset image column (arrow structs of PNG bytes) -> uint8 [N, 3, H, W]."""
    import io

    from PIL import Image

    arrays = [np.asarray(Image.open(io.BytesIO(cell["bytes"])).convert("RGB")) for cell in column.to_pylist()]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def action_chunks(actions: torch.Tensor, episode: torch.Tensor, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The next `chunk_size` actions of every frame, within its episode, and which are real.

    Same result as lerobot's `delta_timestamps={"action": [0, 1/fps, ...]}`: past the
    episode's end the last action is repeated and marked as padding (`action_is_pad`);
    computed on whole columns because lerobot's per-item query is about 0.4 s a frame here.
    """
    n = len(actions)
    offsets = torch.arange(chunk_size)
    idx = torch.arange(n)[:, None] + offsets[None]  # [N, chunk]
    last = torch.zeros(n, dtype=torch.long)  # index of each frame's episode end
    change = torch.nonzero(episode[1:] != episode[:-1]).flatten()
    ends = torch.cat([change, torch.tensor([n - 1])])
    starts = torch.cat([torch.tensor([0]), change + 1])
    for a, b in zip(starts.tolist(), ends.tolist()):
        last[a: b + 1] = b
    valid = idx <= last[:, None]
    return actions[torch.minimum(idx, last[:, None])], valid


def task_demo_limits(entries: list[str]) -> dict[str, int]:
    """`task_max_demos` entries (`TASK=N`) as {task: N}.

    Why: tasks differ in how few demos already saturate them; one cap for all cannot put every
    task's cloned success inside the headroom band RIPT needs.
    """
    limits = {}
    for entry in entries:
        task, sep, count = entry.rpartition("=")
        if not sep or not task or not count.isdigit() or int(count) < 1:
            raise ValueError(f"task_max_demos entry {entry}: write TASK=N with N >= 1, e.g. task_max_demos=[libero_goal:8=5]")
        limits[task] = int(count)
    return limits


def choose_demos(episodes: list[dict[str, Any]], cfg: BCConfig,
                 allowed: dict[str, list[int]] | None = None) -> tuple[list[int], dict[str, list[int]]]:
    """(episode indices, {task: init states}) of the demos to clone: each task's first ones in init-state order.

    A task takes demos from `cfg.demo_init_states` up to its `task_max_demos` cap, else
    `max_demos_per_task` (0: no cap); `allowed` narrows each task to the states it lists.
    """
    wanted, limits = set(cfg.demo_init_states), task_demo_limits(cfg.task_max_demos)
    unknown = sorted(set(limits) - {ep["task"] for ep in episodes})
    if unknown:
        raise ValueError(f"task_max_demos names {unknown}, not among {cfg.dataset}'s tasks; use names like libero_goal:8")
    chosen, cloned = [], {}
    for ep in sorted(episodes, key=lambda e: (e["init_state_id"], e["episode_index"])):
        task, state = ep["task"], ep["init_state_id"]
        if state not in wanted or (allowed is not None and state not in allowed.get(task, ())):
            continue
        cap = limits.get(task, cfg.max_demos_per_task)
        if not cap or len(cloned.get(task, [])) < cap:
            chosen.append(ep["episode_index"])
            cloned.setdefault(task, []).append(state)
    return chosen, cloned


def load_demos(cfg: BCConfig, actor: PI0Actor, stride: int = 1, norm: NormStats | None = None,
               allowed: dict[str, list[int]] | None = None) -> tuple[TensorDict, NormStats, dict[str, Any]]:
    """Every `stride`-th frame of each chosen episode as the policy sees it, with its next-chunk target.

    Returns (samples [N], norm stats, info). Samples hold uint8 PI0 images, the normalised
    padded state, the instruction's tokens, the normalised padded action chunk and its mask.
    The dataset is read column-wise through lerobot's LeRobotDataset (its arrow table).
    A stride (e.g. the policy's replanning period) skips frames before their PNGs are decoded,
    which is most of the load time; chunks still span the episode's every action.
    `norm`: the statistics of a trained policy, whose own normalisation the samples must use
    (another dataset's statistics would shift and rescale its targets); default: the dataset's
    own, which is what a new policy is cloned with.
    `allowed`: {task: init states} a policy was cloned on (its `cloned_init_states`); other
    (task, init state) demos are left out, so a replay never hands a task demos it never saw.
    """
    if stride < 1:
        raise ValueError(f"stride={stride}: must be >= 1 (1 keeps every frame)")
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    info = demo_info(cfg)
    chosen, cloned = choose_demos(info["episodes"], cfg, allowed)
    if not chosen:
        raise ValueError(f"no demo in {cfg.dataset} starts from demo_init_states={cfg.demo_init_states}")
    per_task = {task: len(states) for task, states in cloned.items()}
    dataset = LeRobotDataset(cfg.repo_id, root=cfg.dataset)
    table = dataset.hf_dataset.with_format("arrow")[:]
    episode = torch.as_tensor(table.column("episode_index").to_numpy().copy())
    rows = torch.nonzero(torch.isin(episode, torch.as_tensor(chosen))).flatten()
    table = table.take(rows.numpy())
    episode = episode[rows]
    norm = demo_norm_stats(dataset) if norm is None else norm
    state = torch.as_tensor(np.stack(table.column(STATE_KEY).to_numpy(zero_copy_only=False)), dtype=torch.float32)
    actions = torch.as_tensor(np.stack(table.column(ACTION_KEY).to_numpy(zero_copy_only=False)), dtype=torch.float32)
    chunks, mask = action_chunks(actions, episode, cfg.chunk_size)
    if stride > 1:  # frames 0, stride, 2*stride, ... of every episode
        keep = torch.nonzero(torch.as_tensor(table.column("frame_index").to_numpy().copy()) % stride == 0).flatten()
        table, episode, state, chunks, mask = table.take(keep.numpy()), episode[keep], state[keep], chunks[keep], mask[keep]
    tokenize = PI0TokenizeTransform(actor.tokenizer, max_length=actor.policy.config.tokenizer_max_length)
    names = {int(i): str(t) for t, i in zip(dataset.meta.tasks.index, dataset.meta.tasks["task_index"])}
    task_index = torch.as_tensor(table.column("task_index").to_numpy().copy())
    tokens, lmask = {}, {}
    for i, name in names.items():
        td = tokenize(TensorDict({K.TASK: name}, batch_size=[]))
        tokens[i], lmask[i] = td.get(K.LANG_TOKENS), td.get(K.LANG_MASK)
    samples = TensorDict({
        K.PI0_IMAGE: decode_images(table.column(IMAGE_KEY)), K.PI0_WRIST_IMAGE: decode_images(table.column(WRIST_KEY)),
        K.PI0_STATE: PI0StateTransform(norm).normalize_padded(state),
        K.LANG_TOKENS: torch.stack([tokens[int(i)] for i in task_index]),
        K.LANG_MASK: torch.stack([lmask[int(i)] for i in task_index]),
        K.ACTION_CHUNK: torch.nn.functional.pad(norm.normalize_action(chunks), (0, 32 - ACTION_DIM)),
        "action_mask": mask,
    }, batch_size=[len(episode)])
    info.update(demos=len(chosen), demos_per_task=per_task, cloned_init_states=cloned, frames=len(rows))
    return samples, norm, info


def random_shift(images: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """DrQ-style augmentation: replicate-pad by `pad` pixels and crop back at a random offset per sample."""
    if pad <= 0:
        return images
    b, _, h, w = images.shape
    padded = torch.nn.functional.pad(images.float(), (pad, pad, pad, pad), mode="replicate")
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    out = torch.stack([padded[i, :, dy[i]: dy[i] + h, dx[i]: dx[i] + w] for i in range(b)])
    return out.round().to(images.dtype)


# --------------------------------------------------------------------------- model, eval, save


def make_actor(cfg: BCConfig, image_size: int) -> PI0Actor:
    """A fresh tiny PI0 of the configured sizes, with a tokenizer that knows the demos' instructions."""
    spec = TinyPI0Spec(
        width=cfg.width, depth=cfg.depth, mlp_dim=2 * cfg.width, vision_width=cfg.vision_width,
        vision_depth=cfg.vision_layers, vision_mlp_dim=2 * cfg.vision_width, patch_size=cfg.patch_size,
    )
    return PI0Actor.tiny(spec, seed=cfg.seed, chunk_size=cfg.chunk_size, n_action_steps=cfg.n_action_steps,
                         image_size=image_size, num_inference_steps=cfg.num_inference_steps)


def save_checkpoint(actor: PI0Actor, norm: NormStats, cfg: BCConfig, directory: Path, info: dict[str, Any]) -> Path:
    """lerobot-format weights + config, tiny spec, tokenizer, and the demo norm stats as lerobot processors."""
    actor.dataset_stats = norm.lerobot_stats()
    actor.save_pretrained(directory)
    (directory / "bc_config.json").write_text(json.dumps({"config": asdict(cfg), **info}, indent=2))
    return directory


# --------------------------------------------------------------------------- main


def train(cfg: BCConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Load the demos, fit the tiny PI0, evaluate each task along the way, save to cfg.out."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    out = Path(cfg.out)
    demo_cfg = demo_info(cfg)["config"]
    camera_size, image_size, tasks = int(demo_cfg["camera_size"]), int(demo_cfg["image_size"]), list(demo_cfg["tasks"])
    if demo_cfg["n_action_steps"] != cfg.n_action_steps:
        log(f"note: demos replanned every {demo_cfg['n_action_steps']} steps, the policy every {cfg.n_action_steps}")
    actor = make_actor(cfg, image_size)
    t0 = time.perf_counter()
    data, norm, info = load_demos(cfg, actor)
    n_params = sum(p.numel() for p in actor.parameters())
    log(f"{info['frames']} frames from {info['demos']} demos {info['demos_per_task']} loaded in "
        f"{time.perf_counter() - t0:.0f}s; tiny PI0 with {n_params / 1e6:.2f}M parameters, {image_size}px images")
    params = [p for p in actor.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, cfg.lr, cfg.weight_decay, [0.9, 0.95])
    scheduler = make_scheduler(optimizer, schedule="wsd", warmup_steps=cfg.warmup_steps, total_steps=cfg.steps,
                               min_lr_ratio=0.0, decay_steps=cfg.decay_steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    ema = WeightEMA(actor, cfg.ema_decay) if cfg.ema_decay > 0 else None
    shipped = ema.model if ema is not None else actor  # what evaluations and checkpoints see
    curve: list[dict[str, Any]] = []
    meta = {"demos": info["demos"], "demos_per_task": info["demos_per_task"],
            "cloned_init_states": info["cloned_init_states"], "frames": info["frames"],
            "params": n_params, "camera_size": camera_size, "tasks": tasks}
    t_train, losses = time.perf_counter(), []
    workers: TaskWorkers | None = None  # one env worker per task, built at the first evaluation
    try:
        for step in range(1, cfg.steps + 1):
            idx = torch.randint(0, len(data), (cfg.batch_size,), generator=gen)
            batch = data[idx].clone()
            for key in (K.PI0_IMAGE, K.PI0_WRIST_IMAGE):
                batch.set(key, random_shift(batch.get(key), cfg.shift_px, gen))
            loss = actor.per_sample_loss(batch).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update(actor)
            losses.append(loss.item())
            if step % 50 == 0:
                log(f"step {step}/{cfg.steps} loss {np.mean(losses[-50:]):.4f} ({(time.perf_counter() - t_train) / step:.2f} s/step)")
            if not ((cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps):
                if cfg.save_every and step % cfg.save_every == 0:
                    save_checkpoint(shipped, norm, cfg, out.parent / f"{out.name}_step{step}",
                                    {"curve": curve, "saved_at_step": step, **meta})
                continue
            minutes = (time.perf_counter() - t_train) / 60
            t_eval = time.perf_counter()
            workers = workers or TaskWorkers(shipped, norm, tasks, camera_size, seed=cfg.seed)
            rates = workers.evaluate(cfg.eval_init_states)
            point = {"step": step, "train_minutes": round(minutes, 2), "success": rates, "loss": float(np.mean(losses[-50:]))}
            curve.append(point)
            log(f"eval step {step} ({minutes:.1f} train min): " + ", ".join(f"{t} {r:.2f}" for t, r in rates.items())
                + f" on init states {cfg.eval_init_states} ({time.perf_counter() - t_eval:.0f}s)")
            save_checkpoint(shipped, norm, cfg, out if step == cfg.steps else out.parent / f"{out.name}_step{step}",
                            {"curve": curve, **meta})
            t_train += time.perf_counter() - t_eval  # training minutes exclude evaluation
    finally:
        if workers is not None:
            workers.close()
    return {"curve": curve, "out": out, **meta}


def validate(cfg: BCConfig) -> None:
    """Checks before any demo is read (also run by --dry-run); raises ConfigError (one line)."""
    if cfg.steps < 1 or cfg.batch_size < 1:
        raise ConfigError(f"steps and batch_size must be >= 1, got {cfg.steps} and {cfg.batch_size}")
    if not 0 <= cfg.decay_steps <= cfg.steps:
        raise ConfigError(f"decay_steps must be within 0..steps ({cfg.steps}), got {cfg.decay_steps}")
    if not 0.0 <= cfg.ema_decay < 1.0:
        raise ConfigError(f"ema_decay must be in [0, 1) (0 saves the raw weights), got {cfg.ema_decay}")
    if set(cfg.demo_init_states) & set(cfg.eval_init_states):
        raise ConfigError("eval_init_states must not overlap demo_init_states (held-out evaluation)")
    try:
        task_demo_limits(cfg.task_max_demos)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    if not Path(cfg.dataset).is_dir():
        raise ConfigError(f"dataset={cfg.dataset} not found: write it with `python recipes/collect_demos.py out={cfg.dataset}`")


def parse_args(argv: list[str] | None = None) -> BCConfig:
    """argv as a validated BCConfig, or one `config error:` line and exit 2."""
    return load_config_or_exit(BCConfig, argv, validate)


def _train_and_print(cfg: BCConfig) -> dict[str, Any]:
    result = train(cfg, log=lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True))
    print(json.dumps({"out": str(result["out"]), "curve": result["curve"]}, indent=2))
    return result


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Behaviour-clone the warm start (or, with --dry-run, print the config and stop)."""
    return run_cli(BCConfig, _train_and_print, argv, validate=validate, description=__doc__)


if __name__ == "__main__":
    main()
