"""LIBERO simulator steps/s with both cameras rendered every step, for one GL backend and render device.

    MUJOCO_GL=egl    .venv/bin/python benchmarks/render_rate.py gpu_id=0      # EGL on GPU 0 (render_gpu_device_id)
    MUJOCO_GL=osmesa .venv/bin/python benchmarks/render_rate.py               # software rendering on the CPU

MuJoCo picks its GL backend at import, so each backend needs its own process:
benchmarks/gpu_check.sh runs both and prints their ratio. The last line is
`steps_per_s=<value>` for the script to read.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from ript.recipes.training.cli import run_cli
from ript.recipes.training.config import ConfigError


@dataclass
class RenderConfig:
    gpu_id: int = -1  # render_gpu_device_id (-1: the backend's default device)
    steps: int = 60  # timed simulator steps (after 5 warm-up steps)
    camera: int = 224  # camera height = width


def validate(cfg: RenderConfig) -> None:
    """Sizes, before the simulator is built."""
    if cfg.steps < 1 or cfg.camera < 1:
        raise ConfigError(f"steps and camera must be >= 1, got {cfg.steps} and {cfg.camera}")


def measure(args: RenderConfig) -> None:
    """Step LIBERO with both cameras rendered and print steps/s (last line steps_per_s=...)."""
    from ript.envs import LiberoEnv

    env = LiberoEnv("libero_object", 0, camera_size=args.camera, max_steps=10_000, lazy_render=False, render_gpu_device_id=args.gpu_id)
    td = env.reset()
    actions = np.random.default_rng(0).uniform(-0.3, 0.3, (args.steps + 5, 7)).astype(np.float32)
    actions[:, -1] = -1.0
    for a in actions[:5]:  # warm-up
        td = env.step(td.set("action", torch.as_tensor(a)))["next"]
    start = time.perf_counter()
    for a in actions[5:]:
        td = env.step(td.set("action", torch.as_tensor(a)))["next"]
    rate = args.steps / (time.perf_counter() - start)
    env.close()
    print(f"LIBERO libero_object task 0, 2 cameras at {args.camera} px every step, MUJOCO_GL={os.environ.get('MUJOCO_GL')}, "
          f"render_gpu_device_id={args.gpu_id}: {rate:.1f} steps/s")
    print(f"steps_per_s={rate:.3f}")


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: key=value settings, --dry-run, -h."""
    run_cli(RenderConfig, measure, argv, validate=validate, description=__doc__)


if __name__ == "__main__":
    main()
