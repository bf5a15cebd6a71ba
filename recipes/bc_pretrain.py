"""Warm start for RIPT: behaviour-clone a tiny PI0 on scripted-expert demos of one LIBERO task.

RIPT learns only from groups whose rollouts disagree, so its starting policy must
sometimes succeed (roughly 10-60%). Real PI0 LIBERO weights cannot be downloaded here,
so this recipe builds one, reproducibly, on a CPU:

  1. demos: the privileged `PickPlaceExpert` acts through ript's own `LiberoEnv` at the
     policy's decision cadence (one chunk of n_action_steps actions per observation);
     only successful episodes are kept; init states `--demo-init-states`
  2. norm stats: mean/std of the raw 8-dim state and 7-dim actions of the demos
  3. the PI0 transforms (rotate, resize-with-pad, normalise, pad, tokenize) turn the raw
     observations into exactly what the policy sees in `recipes/ript_cfg.py`
  4. training: flow matching through `PI0Actor.per_sample_loss`; a sample's chunk is the
     next chunk_size executed actions, steps past the episode end masked out
     (td["action_mask"]); +-shift pixel random-shift augmentation; AdamW, warm-up then
     constant LR (so a checkpoint after k steps equals a run with --steps k)
  5. evaluation on held-out init states every --eval-every steps (the BC curve), and the
     final checkpoint saved in lerobot format with its norm stats as lerobot processors,
     so `policy.path=<out>` works in the RIPT recipe.

    python recipes/bc_pretrain.py --out configs/pretrained/tiny_pi0_libero_object_task1
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `ript` importable from a plain checkout too
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase

import ript.envs  # noqa: F401  (sets MUJOCO_GL before mujoco loads)
from ript.algos.pi0_actor import PI0Actor
from ript.algos.tiny_pi0 import TinyPI0Spec
from ript.envs import NormStats, make_libero_env, make_pi0_transforms
from ript.envs import keys as K
from ript.envs.scripted_expert import PickPlaceExpert
from ript.envs.transforms import PI0ActionTransform, PI0StateTransform

STATE_DIM, ACTION_DIM = 8, 7


@dataclass
class BCConfig:
    """Everything that defines the warm-start checkpoint (saved beside it as bc_config.json)."""

    out: str = "runs/bc_pretrain"
    suite: str = "libero_object"
    task: int = 1
    demo_init_states: list[int] = field(default_factory=lambda: list(range(0, 40)))
    eval_init_states: list[int] = field(default_factory=lambda: list(range(40, 50)))
    camera_size: int = 128  # must equal the RIPT config's env.camera_size
    max_steps: int = 280  # simulator steps per episode (openpi's libero_object budget)
    # tiny PI0
    width: int = 96
    depth: int = 3
    vision_width: int = 64
    vision_layers: int = 3
    image_size: int = 128
    patch_size: int = 16
    chunk_size: int = 10
    n_action_steps: int = 5
    num_inference_steps: int = 5
    # optimisation
    steps: int = 2000
    batch_size: int = 32
    lr: float = 3e-4
    warmup_steps: int = 100
    weight_decay: float = 1e-4
    shift_px: int = 6
    eval_every: int = 500  # 0 = only at the end
    seed: int = 0
    threads: int = 2


# --------------------------------------------------------------------------- demos


def collect_demos(cfg: BCConfig, log=print) -> list[dict[str, Any]]:
    """Expert episodes through LiberoEnv: raw decision-step observations and executed actions.

    Returns one dict per successful episode: "obs" (TensorDict [T] of raw observations and
    "task"), "actions" (float32 [N, 7], every executed simulator action), "init_state_id".
    """
    env = make_libero_env(
        cfg.suite, cfg.task, action_chunk=cfg.n_action_steps, camera_size=cfg.camera_size,
        max_steps=cfg.max_steps, init_state_mode="fixed", seed=cfg.seed,
    )
    demos, failed = [], []
    try:
        for init in cfg.demo_init_states:
            env.push_contexts([{K.INIT_STATE_ID: int(init)}])
            td = env.reset()
            expert = PickPlaceExpert(env.sim.robosuite_env)
            obs, actions, success = [], [], False
            while True:
                chunk = expert.act(cfg.n_action_steps)
                obs.append(td.select(K.OBS, K.TASK).clone())
                td = env.step(td.set("action", torch.as_tensor(chunk, dtype=torch.float32)))
                nxt = td.get("next")
                executed = int(nxt.get(K.STEPS_EXECUTED).item())
                actions.append(np.asarray(chunk[:executed], dtype=np.float32))
                success = bool(nxt.get(K.SUCCESS).item())
                if bool(nxt.get("done").item()):
                    break
                td = nxt.exclude("reward", "done", "terminated", "truncated").clone()
            if success:
                demos.append({"obs": torch.stack(obs), "actions": np.concatenate(actions), "init_state_id": int(init)})
            else:
                failed.append(int(init))
            log(f"demo init {init}: {'ok' if success else 'FAILED'} in {sum(len(a) for a in actions)} steps")
    finally:
        env.close()
    if not demos:
        raise RuntimeError(f"the expert solved none of init states {cfg.demo_init_states}: check the task is a pick-and-place")
    log(f"expert: {len(demos)}/{len(demos) + len(failed)} successful demos (failed: {failed})")
    return demos


def demo_norm_stats(demos: list[dict[str, Any]]) -> NormStats:
    """mean/std of the raw state (eef pos, axis-angle, gripper) and of the executed actions."""
    raw = PI0StateTransform(NormStats.identity(STATE_DIM, ACTION_DIM))
    states = torch.cat([raw.raw_state(d["obs"].get(K.EEF_POS), d["obs"].get(K.EEF_QUAT), d["obs"].get(K.GRIPPER_QPOS)) for d in demos])
    actions = torch.from_numpy(np.concatenate([d["actions"] for d in demos]))
    floor = 1e-2  # near-constant dims (e.g. rotations a top-down expert rarely uses) stay well conditioned
    return NormStats(
        state_mean=states.mean(0), state_std=states.std(0).clamp_min(floor),
        action_mean=actions.mean(0), action_std=actions.std(0).clamp_min(floor),
    )


def build_dataset(demos: list[dict[str, Any]], actor: PI0Actor, norm: NormStats, cfg: BCConfig) -> TensorDict:
    """Decision-step samples as the policy sees them + the next chunk_size normalised actions and a mask."""
    transforms = make_pi0_transforms(norm, image_size=cfg.image_size, tokenizer=actor.tokenizer,
                                     tokenizer_max_length=actor.policy.config.tokenizer_max_length)
    obs_transforms = [t for t in transforms if not isinstance(t, PI0ActionTransform)]  # actions are normalised below
    samples = []
    for d in demos:
        td = d["obs"].clone()
        for t in obs_transforms:
            td = t(td)
        acts = torch.from_numpy(d["actions"])
        steps = td.shape[0]
        chunks = torch.zeros(steps, cfg.chunk_size, ACTION_DIM)
        mask = torch.zeros(steps, cfg.chunk_size, dtype=torch.bool)
        for i in range(steps):
            seg = acts[i * cfg.n_action_steps: i * cfg.n_action_steps + cfg.chunk_size]
            chunks[i, : len(seg)] = seg
            mask[i, : len(seg)] = True
            chunks[i, len(seg):] = seg[-1]  # masked out of the loss; a plausible value anyway
        chunks = torch.nn.functional.pad(norm.normalize_action(chunks), (0, 32 - ACTION_DIM))
        samples.append(TensorDict({
            K.PI0_IMAGE: td.get(K.PI0_IMAGE), K.PI0_WRIST_IMAGE: td.get(K.PI0_WRIST_IMAGE), K.PI0_STATE: td.get(K.PI0_STATE),
            K.LANG_TOKENS: td.get(K.LANG_TOKENS), K.LANG_MASK: td.get(K.LANG_MASK),
            K.ACTION_CHUNK: chunks, "action_mask": mask,
        }, batch_size=[steps]))
    return torch.cat(samples)


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


def make_actor(cfg: BCConfig) -> PI0Actor:
    spec = TinyPI0Spec(
        width=cfg.width, depth=cfg.depth, mlp_dim=2 * cfg.width, vision_width=cfg.vision_width,
        vision_depth=cfg.vision_layers, vision_mlp_dim=2 * cfg.vision_width, patch_size=cfg.patch_size,
    )
    return PI0Actor.tiny(spec, seed=cfg.seed, chunk_size=cfg.chunk_size, n_action_steps=cfg.n_action_steps,
                         image_size=cfg.image_size, num_inference_steps=cfg.num_inference_steps)


@torch.no_grad()
def evaluate(actor: PI0Actor, norm: NormStats, cfg: BCConfig, init_states: list[int], seed: int = 0) -> float:
    """Success rate of the policy on `init_states` (one episode each) in LiberoEnv + PI0 transforms."""
    transforms = make_pi0_transforms(norm, image_size=cfg.image_size, tokenizer=actor.tokenizer,
                                     tokenizer_max_length=actor.policy.config.tokenizer_max_length)
    env = make_libero_env(cfg.suite, cfg.task, action_chunk=cfg.n_action_steps, camera_size=cfg.camera_size,
                          max_steps=cfg.max_steps, init_state_mode="fixed", transforms=transforms, seed=seed)
    actor.eval()
    successes = 0
    try:
        torch.manual_seed(seed)
        for init in init_states:
            env.push_contexts([{K.INIT_STATE_ID: int(init)}])
            td = env.rollout(cfg.max_steps, actor, break_when_any_done=True)
            successes += bool(td.get(("next", K.SUCCESS)).any())
    finally:
        env.close()
        actor.train()
    return successes / max(len(init_states), 1)


def save_checkpoint(actor: PI0Actor, norm: NormStats, cfg: BCConfig, directory: Path, info: dict[str, Any]) -> Path:
    """lerobot-format weights + config, tiny spec, tokenizer, and the demo norm stats as lerobot processors."""
    actor.dataset_stats = norm.lerobot_stats()
    actor.save_pretrained(directory)
    (directory / "bc_config.json").write_text(json.dumps({"config": asdict(cfg), **info}, indent=2))
    return directory


# --------------------------------------------------------------------------- main


def train(cfg: BCConfig, log=print) -> dict[str, Any]:
    """Collect demos, fit the tiny PI0, evaluate along the way, save to cfg.out; returns the BC curve."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    out = Path(cfg.out)
    t0 = time.perf_counter()
    demos = collect_demos(cfg, log)
    collect_s = time.perf_counter() - t0
    norm = demo_norm_stats(demos)
    actor = make_actor(cfg)
    data = build_dataset(demos, actor, norm, cfg)
    n_params = sum(p.numel() for p in actor.parameters())
    log(f"{len(data)} decision-step samples from {len(demos)} demos in {collect_s:.0f}s; tiny PI0 with {n_params / 1e6:.2f}M parameters")
    params = [p for p in actor.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(cfg.warmup_steps, 1)))
    gen = torch.Generator().manual_seed(cfg.seed)
    curve: list[dict[str, float]] = []
    t_train, losses = time.perf_counter(), []
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
        losses.append(loss.item())
        if step % 50 == 0:
            log(f"step {step}/{cfg.steps} loss {np.mean(losses[-50:]):.4f} ({(time.perf_counter() - t_train) / step:.2f} s/step)")
        if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:
            minutes = (time.perf_counter() - t_train) / 60
            t_eval = time.perf_counter()
            rate = evaluate(actor, norm, cfg, cfg.eval_init_states)
            point = {"step": step, "train_minutes": round(minutes, 2), "success_rate": rate, "loss": float(np.mean(losses[-50:]))}
            curve.append(point)
            log(f"eval step {step} ({minutes:.1f} train min): success {rate:.2f} on init states {cfg.eval_init_states} ({time.perf_counter() - t_eval:.0f}s)")
            save_checkpoint(actor, norm, cfg, out if step == cfg.steps else out.parent / f"{out.name}_step{step}",
                            {"curve": curve, "demos": len(demos), "params": n_params})
            t_train += time.perf_counter() - t_eval  # training minutes exclude evaluation
    return {"curve": curve, "out": out, "demos": len(demos), "params": n_params}


def parse_args(argv: list[str] | None = None) -> BCConfig:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    defaults = BCConfig()
    for f in BCConfig.__dataclass_fields__.values():
        value = getattr(defaults, f.name)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, list):
            parser.add_argument(flag, type=int, nargs="+", default=value)
        else:
            parser.add_argument(flag, type=type(value), default=value)
    args = parser.parse_args(argv)
    cfg = BCConfig(**vars(args))
    if cfg.steps < 1 or cfg.batch_size < 1:
        parser.error(f"--steps and --batch-size must be >= 1, got {cfg.steps} and {cfg.batch_size}")
    if set(cfg.demo_init_states) & set(cfg.eval_init_states):
        parser.error("--eval-init-states must not overlap --demo-init-states (held-out evaluation)")
    return cfg


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = parse_args(argv)
    result = train(cfg, log=lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True))
    print(json.dumps({"out": str(result["out"]), "curve": result["curve"]}, indent=2))
    return result


if __name__ == "__main__":
    main()
