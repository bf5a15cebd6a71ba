"""Scripted-expert demonstrations on LIBERO, written as a LeRobotDataset.

Why: a randomly initialised PI0 never succeeds on LIBERO, so RIPT would drop every
group. Demonstrations from a privileged scripted expert (`ript.envs.scripted_expert`)
let a tiny PI0 be behaviour-cloned into a starting policy with headroom
(`recipes/bc_pretrain.py`), reproducibly and without downloading weights.

Each task runs in its own worker process: ript's `LiberoEnv` steps one simulator
action at a time (a frame per control step, like LeRobot's LIBERO datasets) while the
expert plans a chunk of `n_action_steps` actions per decision, as the policy will act.
Frames store what PI0 sees from the same env: both cameras rotated 180 degrees and
resize-with-padded to `image_size` by the PI0 image transform, and the raw 8-dim state
(eef position, axis-angle, gripper) that the PI0 state transform normalises with the
dataset's statistics. Only successful episodes are written; the expert's success rate
per task is printed and saved to `<out>/expert_success.json`.

    python recipes/collect_demos.py out=data/scripted_libero
    python recipes/collect_demos.py out=data/x tasks=[libero_goal:8] init_states=[0,1,2] --dry-run   # config only

Settings are `key=value` over `DemoConfig` (`-h` lists them; recipes/training/cli.py).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
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

from ript.recipes.training.cli import load_config_or_exit, run_cli
from ript.recipes.training.config import ConfigError
from ript.recipes.training.multitask import parse_task
from ript.recipes.training.preflight import PreflightError, check_libero_contexts

DEFAULT_TASKS = ["libero_spatial:2", "libero_object:1", "libero_goal:8"]
FPS = 20  # LIBERO's control frequency
IMAGE_KEY, WRIST_KEY = "observation.images.image", "observation.images.wrist_image"
STATE_KEY, ACTION_KEY = "observation.state", "action"
STATE_NAMES = ["eef_x", "eef_y", "eef_z", "axis_angle_x", "axis_angle_y", "axis_angle_z", "gripper_left", "gripper_right"]
EPISODES_FILE = "ript_episodes.json"  # beside LeRobot's meta/: which task and init state each episode is
ACTION_NAMES = ["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"]


@dataclass
class DemoConfig:
    """What defines a demonstration dataset (saved in it as demo_config.json)."""

    out: str = "data/scripted_libero"
    repo_id: str = "ript/scripted_libero"
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))  # "suite:task_id"
    init_states: list[int] = field(default_factory=lambda: list(range(50)))
    camera_size: int = 128  # the env's rendering size; the RL config's env.camera_size must match
    image_size: int = 128  # PI0's resize-with-pad target; the policy's image size must match
    n_action_steps: int = 5  # expert replans every this many steps, like the policy
    workers: int = 2
    overwrite: bool = False
    measure_only: bool = False  # run the experts and report their success; write no dataset


def dataset_features(image_size: int) -> dict[str, dict[str, Any]]:
    """LeRobot feature spec: two cameras (HWC uint8), the 8-dim raw state, the 7-dim action."""
    image = {"dtype": "image", "shape": (image_size, image_size, 3), "names": ["height", "width", "channel"]}
    return {
        IMAGE_KEY: image,
        WRIST_KEY: dict(image),
        STATE_KEY: {"dtype": "float32", "shape": (len(STATE_NAMES),), "names": STATE_NAMES},
        ACTION_KEY: {"dtype": "float32", "shape": (len(ACTION_NAMES),), "names": ACTION_NAMES},
    }


def expert_episode(env: Any, image_transform: Any, state_transform: Any, init_state_id: int, n_action_steps: int) -> dict[str, Any]:
    """One expert episode from `init_state_id` on a raw LiberoEnv with action_chunk=1.

    Returns the frames (images HWC uint8 as PI0 sees them, raw state, action) and success.
    """
    from ript.envs import keys as K
    from ript.envs.scripted_expert import make_expert

    env.push_contexts([{K.INIT_STATE_ID: int(init_state_id)}])
    td = env.reset()
    expert = make_expert(env.sim.robosuite_env)
    images, wrists, states, actions = [], [], [], []
    success, plan = False, []
    while True:
        if not plan:
            plan = list(expert.act(n_action_steps))
        action = np.asarray(plan.pop(0), dtype=np.float32)
        seen = image_transform(td.select(K.OBS).clone())
        images.append(seen.get(K.PI0_IMAGE).permute(1, 2, 0).numpy())
        wrists.append(seen.get(K.PI0_WRIST_IMAGE).permute(1, 2, 0).numpy())
        states.append(state_transform.raw_state(td.get(K.EEF_POS), td.get(K.EEF_QUAT), td.get(K.GRIPPER_QPOS)).numpy())
        actions.append(action)
        td = env.step(td.set("action", torch.from_numpy(action)[None]))
        nxt = td.get("next")
        success = bool(nxt.get(K.SUCCESS).item())
        if bool(nxt.get("done").item()):
            break
        td = nxt.exclude("reward", "done", "terminated", "truncated").clone()
    return {
        "image": np.stack(images), "wrist": np.stack(wrists), "state": np.stack(states).astype(np.float32),
        "action": np.stack(actions), "steps": len(actions), "success": success, "init_state_id": int(init_state_id),
        "instruction": str(env.sim.instruction),
    }


def expert_success(env: Any, init_state_id: int, n_action_steps: int) -> dict[str, Any]:
    """The expert's outcome alone (no frames): whole chunks per env step, so only decisions render."""
    from ript.envs import keys as K
    from ript.envs.scripted_expert import make_expert

    env.push_contexts([{K.INIT_STATE_ID: int(init_state_id)}])
    td = env.reset()
    expert = make_expert(env.sim.robosuite_env)
    steps = 0
    while True:
        td = env.step(td.set("action", torch.as_tensor(expert.act(n_action_steps), dtype=torch.float32)))
        nxt = td.get("next")
        steps += int(nxt.get(K.STEPS_EXECUTED).item())
        if bool(nxt.get("done").item()):
            break
        td = nxt.exclude("reward", "done", "terminated", "truncated").clone()
    return {"steps": steps, "success": bool(nxt.get(K.SUCCESS).item()), "init_state_id": int(init_state_id),
            "instruction": str(env.sim.instruction)}


def _worker(task_spec: str, cfg_dict: dict[str, Any], queue: Any, parent: int | None = None) -> None:
    """Runs one task's episodes and sends each back (the parent alone writes the dataset)."""
    try:
        import ript.envs  # noqa: F401  (MUJOCO_GL before mujoco loads)
        from ript.envs import NormStats, make_libero_env
        from ript.envs.transforms import PI0ImageTransform, PI0StateTransform

        torch.set_num_threads(1)
        cfg = DemoConfig(**cfg_dict)
        suite, task = parse_task(task_spec)
        chunk = cfg.n_action_steps if cfg.measure_only else 1
        env = make_libero_env(suite, task, action_chunk=chunk, camera_size=cfg.camera_size, init_state_mode="fixed", seed=0)
        image_tf = PI0ImageTransform(image_size=cfg.image_size)
        state_tf = PI0StateTransform(NormStats.identity(len(STATE_NAMES), len(ACTION_NAMES)))
        try:
            for init in cfg.init_states:
                if parent is not None and os.getppid() != parent:  # the parent was killed: stop
                    return
                t0 = time.perf_counter()
                if cfg.measure_only:
                    episode = expert_success(env, init, cfg.n_action_steps)
                else:
                    episode = expert_episode(env, image_tf, state_tf, init, cfg.n_action_steps)
                episode.update(task=task_spec, seconds=time.perf_counter() - t0)
                queue.put(("episode", episode))
        finally:
            env.close()
        queue.put(("done", task_spec))
    except BaseException as err:  # report instead of hanging the parent
        queue.put(("error", f"{task_spec}: {type(err).__name__}: {err}"))


def collect(cfg: DemoConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the experts over cfg.tasks x cfg.init_states and write the successful episodes."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    for spec in cfg.tasks:
        parse_task(spec)
    out = Path(cfg.out)
    dataset = None
    if not cfg.measure_only:
        if out.exists():
            if not cfg.overwrite:
                raise FileExistsError(f"{out} exists: pass overwrite=true to replace it or choose another out=")
            shutil.rmtree(out)
        dataset = LeRobotDataset.create(cfg.repo_id, fps=FPS, features=dataset_features(cfg.image_size), root=out,
                                        robot_type="panda", use_videos=False)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue(maxsize=4)
    pending = list(cfg.tasks)
    running: dict[str, Any] = {}
    stats = {spec: {"success": 0, "episodes": 0, "steps": []} for spec in cfg.tasks}
    episodes: list[dict[str, Any]] = []  # episode_index -> task and init state (for held-out splits)
    t0 = time.perf_counter()
    try:
        while pending or running:
            while pending and len(running) < max(cfg.workers, 1):
                spec = pending.pop(0)
                running[spec] = ctx.Process(target=_worker, args=(spec, asdict(cfg), queue, os.getpid()), daemon=True)
                running[spec].start()
            kind, payload = queue.get()
            if kind == "error":
                raise RuntimeError(f"demo worker failed: {payload}")
            if kind == "done":
                running.pop(payload).join()
                continue
            ep, s = payload, stats[payload["task"]]
            s["episodes"] += 1
            if ep["success"]:
                s["success"] += 1
                s["steps"].append(ep["steps"])
            if ep["success"] and dataset is not None:
                for t in range(ep["steps"]):
                    dataset.add_frame({IMAGE_KEY: ep["image"][t], WRIST_KEY: ep["wrist"][t], STATE_KEY: ep["state"][t],
                                       ACTION_KEY: ep["action"][t], "task": ep["instruction"]})
                dataset.save_episode()
                episodes.append({"episode_index": len(episodes), "task": ep["task"], "init_state_id": ep["init_state_id"],
                                 "instruction": ep["instruction"], "length": ep["steps"]})
            log(f"{ep['task']} init {ep['init_state_id']}: {'ok' if ep['success'] else 'FAILED'} in "
                f"{ep['steps']} steps ({ep['seconds']:.1f}s)")
    finally:
        for proc in running.values():
            proc.kill()
        if dataset is not None:
            dataset.finalize()
    summary = {
        spec: {"success_rate": s["success"] / max(s["episodes"], 1), "successes": s["success"], "episodes": s["episodes"],
               "mean_steps": float(np.mean(s["steps"])) if s["steps"] else None}
        for spec, s in stats.items()
    }
    for spec, s in summary.items():
        log(f"expert {spec}: {s['successes']}/{s['episodes']} ({s['success_rate']:.0%}), mean {s['mean_steps']} steps")
    if dataset is None:
        log(f"measured only, nothing written ({time.perf_counter() - t0:.0f}s)")
        return summary
    (out / "expert_success.json").write_text(json.dumps(summary, indent=2))
    (out / "demo_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    (out / EPISODES_FILE).write_text(json.dumps(episodes, indent=1))
    log(f"{dataset.meta.total_episodes} episodes, {dataset.meta.total_frames} frames in {out} "
        f"({time.perf_counter() - t0:.0f}s)")
    return summary


def validate(cfg: DemoConfig) -> None:
    """Everything checkable before a worker starts (also run by --dry-run); raises ConfigError (one line)."""
    try:
        specs = [parse_task(spec) for spec in cfg.tasks]
    except ValueError as err:
        raise ConfigError(f"{err}: write tasks=[suite:task_id,...]") from err
    if cfg.camera_size < 1 or cfg.image_size < 1 or cfg.n_action_steps < 1:
        raise ConfigError("camera_size, image_size and n_action_steps must be >= 1")
    try:  # an out-of-range task or init state would only fail in a worker, after the dataset was started
        for spec, (suite, task) in zip(cfg.tasks, specs):
            check_libero_contexts(suite, [task], {"init_states": cfg.init_states}, tasks_key=f"task {spec}")
    except PreflightError as err:
        raise ConfigError(str(err)) from err


def parse_args(argv: list[str] | None = None) -> DemoConfig:
    """argv as a validated DemoConfig, or one `config error:` line and exit 2."""
    return load_config_or_exit(DemoConfig, argv, validate)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Collect the demonstrations (or, with --dry-run, print the config and stop)."""
    return run_cli(DemoConfig, lambda cfg: collect(cfg, log=lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)),
                   argv, validate=validate, description=__doc__)


if __name__ == "__main__":
    main()
