"""Checks run before any expensive work, each failing with one line that names the fix.

A run that dies an hour in because the disk is full, the checkpoint path has a
typo or EGL is missing wastes the hour; these checks take about a second.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path


class PreflightError(RuntimeError):
    """A precondition of the run does not hold; the message says how to fix it."""


def check_output_dir(path: str | os.PathLike, min_free_gb: float = 1.0) -> Path:
    """The output directory exists (or can be made), is writable and has `min_free_gb` free."""
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise PreflightError(f"logging.output_dir={out} is a file, not a directory: choose another path")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise PreflightError(f"logging.output_dir={out} is not writable ({err.strerror}): fix its permissions or choose another path") from err
    free_gb = shutil.disk_usage(out).free / 1e9
    if free_gb < min_free_gb:
        raise PreflightError(
            f"only {free_gb:.2f} GB free under {out}, the run needs {min_free_gb:g} GB: free space or set preflight.min_free_gb"
        )
    return out


def check_policy_checkpoint(path: str | os.PathLike) -> Path:
    """A local lerobot PI0 checkpoint: a directory with a readable config.json and model.safetensors."""
    ckpt = Path(path).expanduser()
    if not ckpt.is_dir():
        raise PreflightError(f"policy.path={ckpt} is not a directory: point it at a local lerobot PI0 checkpoint (config.json + model.safetensors)")
    cfg_file = ckpt / "config.json"
    if not cfg_file.is_file():
        raise PreflightError(f"policy.path={ckpt} has no config.json: point it at a lerobot PI0 checkpoint directory")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise PreflightError(f"{cfg_file} is unreadable or not JSON ({err}): re-download or re-save the checkpoint") from err
    if cfg.get("type", "pi0") != "pi0":
        raise PreflightError(f"policy.path={ckpt} holds a {cfg.get('type')!r} policy, not pi0: use a PI0 checkpoint")
    weights = ckpt / "model.safetensors"
    if not weights.is_file() or weights.stat().st_size == 0:
        raise PreflightError(f"policy.path={ckpt} has no (or an empty) model.safetensors: the checkpoint is incomplete, re-save it")
    return ckpt


def check_rendering_backend(timeout_s: float = 60.0) -> None:
    """MuJoCo can open an offscreen GL context with the configured backend (in a child process)."""
    backend = os.environ.get("MUJOCO_GL", "egl")
    code = "import mujoco; c = mujoco.GLContext(32, 32); c.make_current(); c.free()"
    env = dict(os.environ, MUJOCO_GL=backend, PYOPENGL_PLATFORM=os.environ.get("PYOPENGL_PLATFORM", backend))
    try:
        res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as err:
        raise PreflightError(f"opening a MUJOCO_GL={backend} context hung for {timeout_s:.0f}s: check the GPU driver or use MUJOCO_GL=osmesa") from err
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise PreflightError(
            f"headless rendering with MUJOCO_GL={backend} is unavailable ({last}): run ./setup.sh "
            "(installs libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6) or export MUJOCO_GL=osmesa"
        )
