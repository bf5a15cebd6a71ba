"""Checks run before any expensive work, each failing with one line that names the fix.

A run that dies an hour in because the disk is full, the checkpoint path has a
typo or EGL is missing wastes the hour; these checks take about a second.
`run_preflight(cfg, out_dir)` runs the ones a config needs, in order: device,
output directory, wandb credentials (logging.wandb=online), policy checkpoint, its
prompt tokenizer, normalisation statistics against the LIBERO state/action sizes,
tasks and init states against the suite's real counts, rendering backend (LIBERO
only). Nothing is created or written by a failing check.
"""

from __future__ import annotations

import json
import netrc
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

# LIBERO's raw sizes (eef pos 3 + axis-angle 3 + gripper 2; 7-dof delta actions), what the stats must describe
LIBERO_STATE_DIM, LIBERO_ACTION_DIM = 8, 7


class PreflightError(RuntimeError):
    """A precondition of the run does not hold; the message says how to fix it."""


def check_output_dir(path: str | os.PathLike, min_free_gb: float = 1.0) -> Path:
    """The output directory (or, if it does not exist yet, its nearest existing parent) is writable and has `min_free_gb` free.

    Nothing is left behind: the probe file is removed and no directory is created.
    """
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise PreflightError(f"logging.output_dir={out} is a file, not a directory: choose another path")
    base = out.absolute()
    while not base.exists():
        base = base.parent
    if not base.is_dir():
        raise PreflightError(f"logging.output_dir={out} lies under the file {base}: choose another path")
    probe = base / f".write-probe-{uuid.uuid4().hex}"
    try:
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise PreflightError(f"logging.output_dir={out} is not writable ({err.strerror}): fix its permissions or choose another path") from err
    free_gb = shutil.disk_usage(base).free / 1e9
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


def check_checkpoint_matches_libero(path: str | os.PathLike) -> None:
    """The checkpoint's declared state/action features fit LIBERO (8-dim state, 7-dim actions) and its padding."""
    ckpt = Path(path).expanduser()
    cfg = json.loads((ckpt / "config.json").read_text())
    feats = {**(cfg.get("input_features") or {}), **(cfg.get("output_features") or {})}
    for key, want, cap in (("observation.state", LIBERO_STATE_DIM, "max_state_dim"), ("action", LIBERO_ACTION_DIM, "max_action_dim")):
        shape = (feats.get(key) or {}).get("shape")
        if shape and int(shape[-1]) != want:
            raise PreflightError(f"policy.path={ckpt} expects a {shape[-1]}-dim '{key}', LIBERO gives {want}: use a PI0 checkpoint trained on LIBERO")
        limit = cfg.get(cap)
        if limit is not None and int(limit) < want:
            raise PreflightError(f"policy.path={ckpt} has {cap}={limit} < {want} (LIBERO's '{key}'): use a PI0 checkpoint trained on LIBERO")


def check_norm_stats(path: str | os.PathLike) -> None:
    """The checkpoint's normalisation statistics load and describe LIBERO's 8-dim state and 7-dim actions."""
    from ript.envs.normalization import NormStats  # LIBERO side: only imported for env.kind=libero

    ckpt = Path(path).expanduser()
    try:
        stats = NormStats.from_lerobot_checkpoint(ckpt)
    except ValueError as err:
        raise PreflightError(f"normalisation statistics of policy.path={ckpt}: {str(err).splitlines()[0]}") from err
    for part, tensor, want in (("state", stats.state_mean, LIBERO_STATE_DIM), ("action", stats.action_mean, LIBERO_ACTION_DIM)):
        if tensor.numel() != want:
            raise PreflightError(
                f"policy.path={ckpt} has {tensor.numel()}-dim {part} statistics, LIBERO needs {want}: use the statistics saved with a LIBERO PI0 checkpoint"
            )


def check_resume_checkpoint(path: str | os.PathLike, freeze: str | None = None) -> None:
    """A checkpoint to resume from is complete and its trainer state unpickles (before the run touches its directory).

    With `freeze` (this run's policy.freeze), the checkpoint's run must have frozen the same part: another
    part changes which parameters the optimizer holds, so its saved state could not be loaded.
    """
    import torch
    import yaml

    ckpt = Path(path)
    try:
        json.loads((ckpt / "meta.json").read_text())
        torch.load(ckpt / "trainer.pt", map_location="cpu", weights_only=False)
    except Exception as err:  # truncated pickle/zip, bad JSON, missing file
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise PreflightError(f"cannot resume from {ckpt} ({type(err).__name__}: {first}): resume from another checkpoints/iter_* dir or start a new run") from err
    policy_dir = ckpt / "policy"
    if not policy_dir.is_dir() or not any(f.stat().st_size > 0 for f in policy_dir.iterdir() if f.is_file()):
        raise PreflightError(f"cannot resume from {ckpt}: its policy/ weights are missing or empty; resume from another checkpoints/iter_* dir")
    saved = ckpt / "config.yaml"
    if freeze is not None and saved.is_file():
        trained = ((yaml.safe_load(saved.read_text()) or {}).get("policy") or {}).get("freeze", "none")
        if trained != freeze:
            raise PreflightError(f"cannot resume from {ckpt} with policy.freeze={freeze}: it was trained with policy.freeze={trained}; set policy.freeze={trained}")


def check_tokenizer(checkpoint: str | os.PathLike | None, tokenizer_path: str | os.PathLike | None) -> None:
    """The prompt tokenizer a PI0 run will use exists, loads offline and fits the checkpoint's vocabulary.

    Why here: a real PI0 needs PaliGemma's tokenizer, and without this check a missing one only
    fails at the first tokenisation, after the env workers started. Sources, as
    `PI0Actor.from_pretrained` picks them: `policy.tokenizer_path`, else `<checkpoint>/tokenizer`,
    else (tiny checkpoints and fresh tiny PI0s only) the offline LIBERO tokenizer.
    """
    ckpt = Path(checkpoint).expanduser() if checkpoint is not None else None
    if tokenizer_path is not None:
        source, key = Path(tokenizer_path).expanduser(), f"policy.tokenizer_path={tokenizer_path}"
        if not source.exists():
            raise PreflightError(f"{key} does not exist: point it at a local tokenizer directory or set it to null")
    elif ckpt is not None and (ckpt / "tokenizer").is_dir():
        source, key = ckpt / "tokenizer", f"the tokenizer shipped in policy.path={ckpt}"
    elif ckpt is None or (ckpt / "tiny_pi0.json").is_file():
        return  # a tiny PI0: the offline LIBERO tokenizer, built in memory
    else:
        raise PreflightError(
            f"policy.path={ckpt} ships no tokenizer/ and policy.tokenizer_path is null: a real PI0 needs PaliGemma's tokenizer; "
            f"set policy.tokenizer_path=<local dir saved with save_pretrained> or copy it to {ckpt}/tokenizer"
        )
    if not any((source / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
        raise PreflightError(f"{key} holds no tokenizer.json, tokenizer.model or tokenizer_config.json: save the tokenizer there with save_pretrained")
    try:
        from transformers import AutoTokenizer

        size = len(AutoTokenizer.from_pretrained(str(source), local_files_only=True))
    except Exception as err:  # a corrupt or foreign file
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise PreflightError(f"{key} does not load offline ({type(err).__name__}: {first}): re-save it with save_pretrained") from err
    rows = _embedding_rows(ckpt) if ckpt is not None else None
    if rows is not None and size > rows:
        raise PreflightError(f"{key} has {size} tokens but policy.path={ckpt} embeds only {rows}: use the tokenizer the checkpoint was trained with")


def _embedding_rows(ckpt: Path) -> int | None:
    """Rows of the checkpoint's token embedding (or the tied LM head), read from the safetensors header only."""
    try:
        from safetensors import safe_open

        with safe_open(str(ckpt / "model.safetensors"), framework="pt") as f:
            for name in f.keys():
                if name.endswith(("language_model.embed_tokens.weight", "paligemma.lm_head.weight")):
                    return int(f.get_slice(name).get_shape()[0])
    except Exception:  # an unreadable file is reported by the weight check, not here
        return None
    return None


def check_wandb_credentials(mode: str) -> None:
    """`logging.wandb=online` needs an API key: without one, wandb.init fails with a traceback after the run started."""
    if mode != "online":
        return
    try:
        import wandb  # noqa: F401
    except ImportError as err:
        raise PreflightError("logging.wandb=online but wandb is not installed: install it or set logging.wandb=offline (or disabled)") from err
    if os.environ.get("WANDB_API_KEY"):
        return
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    candidates = [os.environ["NETRC"]] if os.environ.get("NETRC") else [str(Path.home() / ".netrc"), str(Path.home() / "_netrc")]
    for file in candidates:
        try:
            entry = netrc.netrc(file).authenticators(host)
        except (OSError, netrc.NetrcParseError):
            continue
        if entry and entry[2]:
            return
    raise PreflightError(
        f"logging.wandb=online but no wandb credentials (no WANDB_API_KEY, no {host} entry in ~/.netrc): "
        "run `wandb login` or export WANDB_API_KEY, or set logging.wandb=offline"
    )


def check_device(device: str, key: str = "train.device") -> None:
    """A CUDA device asked for by name exists here (auto and cpu always do)."""
    if not (device == "cuda" or device.startswith("cuda:")):
        return
    import torch

    if not torch.cuda.is_available():
        raise PreflightError(f"{key}={device} but CUDA is not available on this machine: set {key}=cpu (or auto)")
    index, count = int(device.partition(":")[2] or 0), torch.cuda.device_count()
    if index >= count:
        raise PreflightError(f"{key}={device} but this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}: pick one of them or auto")


def check_amp(amp: str, device: str) -> None:
    """amp=fp16 needs CUDA; with train.device=auto on a machine without it the run would silently train in float32."""
    if amp != "fp16" or device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise PreflightError("amp=fp16 needs CUDA and this machine has none: set amp=off (or amp=bf16)")


def check_libero_contexts(suite: str, tasks: Sequence[int], init_states: Mapping[str, Sequence[int]], tasks_key: str = "env.tasks") -> None:
    """Task ids and init-state ids (by config key) exist in `suite`: an out-of-range one would only fail inside an env worker."""
    from ript.envs.libero_env import suite_sizes  # LIBERO's registry, no simulator

    try:
        sizes = suite_sizes(suite)
    except ValueError as err:
        raise PreflightError(str(err)) from err
    bad = [t for t in tasks if not 0 <= int(t) < len(sizes)]
    if bad:
        raise PreflightError(f"{tasks_key} has {bad} out of range: {suite} has tasks 0..{len(sizes) - 1}; use ids in that range")
    n = min(sizes[int(t)] for t in tasks)
    for key, ids in init_states.items():
        bad = [i for i in ids if not 0 <= int(i) < n]
        if bad:
            raise PreflightError(f"{key} has {bad} out of range: {suite} tasks {list(tasks)} ship init states 0..{n - 1}; use ids in that range")


def run_preflight(
    cfg: Any, out_dir: str | os.PathLike, *, resume_from: str | os.PathLike | None = None, rendering: bool | None = None, contexts: bool = True
) -> None:
    """All checks a run of `cfg` (a RIPTConfig) needs, cheapest first; raises PreflightError (one line).

    contexts=False leaves the task/init-state check to a caller that evaluates other suites (eval_libero).
    """
    check_device(cfg.train.device)
    check_amp(cfg.amp, cfg.train.device)
    check_output_dir(out_dir, cfg.preflight.min_free_gb)
    check_wandb_credentials(cfg.logging.wandb)
    if resume_from is not None:
        check_resume_checkpoint(resume_from, freeze=cfg.policy.freeze)
    p = cfg.policy
    if p.kind == "pi0" and p.path is not None:
        check_policy_checkpoint(p.path)
        if cfg.env.kind == "libero":
            check_checkpoint_matches_libero(p.path)
            check_norm_stats(p.path)
    if p.kind == "pi0":
        check_tokenizer(p.path, p.tokenizer_path)
    if cfg.env.kind == "libero" and contexts:
        from .config import task_specs

        specs = task_specs(cfg)
        for suite in dict.fromkeys(s.suite for s in specs):
            check_libero_contexts(suite, [s.task_id for s in specs if s.suite == suite],
                                  {"env.train_init_states": cfg.env.train_init_states, "eval.init_states": cfg.eval.init_states})
    if cfg.algo.demo_replay:  # the checkpoint's clone record and the demo dataset (ConfigError names the fix)
        from .demo_replay import plan_demo_replay

        plan_demo_replay(cfg)
    if cfg.env.kind == "libero" and (rendering if rendering is not None else True):
        check_rendering_backend()


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
