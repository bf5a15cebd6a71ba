"""Atomic, resumable training checkpoints.

Layout under `<output_dir>/checkpoints/`:

    iter_000004/            one complete checkpoint (never modified after it appears)
        policy/             the policy in its own format: `save_pretrained` (lerobot's
                            config.json + model.safetensors for PI0) or policy_state.pt
        trainer.pt          optimizer, scheduler, grad scaler, RNG states, iteration,
                            metrics, extra state (curriculum sampler, early stopping, ...)
        config.yaml         the resolved run config
        meta.json           iteration, metrics, time; written last
    last.json, best.json    pointers {"dir": "iter_000004", ...}, replaced atomically

Why this shape: a checkpoint is first written into `.tmp-*` on the same filesystem,
every file is fsynced, and only then renamed into place (rename is atomic), after
which the pointer file is replaced with `os.replace`. A crash at any moment leaves
the previous checkpoint and pointer intact; leftovers named `.tmp-*` are ignored and
removed by the next run. Old periodic checkpoints are pruned only after the new one
is complete, and the best one is never pruned.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

CKPT_DIRNAME = "checkpoints"
_ITER_RE = re.compile(r"^iter_(\d+)$")
POLICY_STATE_FILE = "policy_state.pt"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be found or read; the message names the fix."""


# --------------------------------------------------------------------------- RNG


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) generator states."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores get_rng_state's generators so a resumed run draws the same numbers; CUDA only on the same device count."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- policy I/O


def save_policy(policy: torch.nn.Module, path: Path) -> None:
    """Save through the policy's own `save_pretrained` (lerobot format) or as a state dict."""
    path.mkdir(parents=True, exist_ok=True)
    module = getattr(policy, "module", policy)  # unwrap DDP
    if hasattr(module, "save_pretrained"):
        module.save_pretrained(path)
    else:
        torch.save(module.state_dict(), path / POLICY_STATE_FILE)


def load_policy(policy: torch.nn.Module, path: Path) -> None:
    """Load weights written by `save_policy` into an existing policy of the same shape."""
    module = getattr(policy, "module", policy)
    state_file = path / POLICY_STATE_FILE
    if state_file.is_file():
        module.load_state_dict(torch.load(state_file, map_location="cpu", weights_only=True))
    elif (path / "model.safetensors").is_file():
        from safetensors.torch import load_file

        # lerobot format: the wrapped lerobot policy's weights (PI0Actor keeps it in `.policy`),
        # plus the CFG label embedding the actor saves beside them
        inner = getattr(module, "policy", None)
        target = inner if isinstance(inner, torch.nn.Module) else module
        device = next(target.parameters()).device
        target.load_state_dict(load_file(str(path / "model.safetensors"), device=str(device)))
        label_file = path / "cfg_label_embed.safetensors"
        if getattr(module, "label_embed", None) is not None and label_file.is_file():
            module.label_embed.load_state_dict(load_file(str(label_file), device=str(device)))
    else:
        raise CheckpointError(f"{path} holds no policy weights ({POLICY_STATE_FILE} or model.safetensors): pick another checkpoint")


# --------------------------------------------------------------------------- fsync helpers


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON through a temp file + fsync + os.replace."""
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


# --------------------------------------------------------------------------- checkpointer


class Checkpointer:
    """Saves and finds checkpoints of one run; only the main rank writes."""

    def __init__(self, output_dir: str | Path, keep_last: int = 2, is_main: bool = True) -> None:
        self.root = Path(output_dir) / CKPT_DIRNAME
        self.keep_last = keep_last
        self.is_main = is_main
        if is_main and self.root.is_dir():  # leftovers of a crashed save
            for tmp in self.root.glob(".tmp-*"):
                shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)

    # -- finding -------------------------------------------------------------------------------
    def complete_checkpoints(self) -> list[Path]:
        """Complete checkpoint dirs, oldest first."""
        if not self.root.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.root.iterdir() if (m := _ITER_RE.match(p.name)) and (p / "meta.json").is_file()]
        return [p for _, p in sorted(found)]

    def _pointer(self, name: str) -> Path | None:
        f = self.root / f"{name}.json"
        if not f.is_file():
            return None
        try:
            target = self.root / json.loads(f.read_text())["dir"]
        except (OSError, ValueError, KeyError):
            return None
        return target if (target / "meta.json").is_file() else None

    def latest(self) -> Path | None:
        """The newest complete checkpoint (pointer first, else a scan)."""
        ckpts = self.complete_checkpoints()
        pointed = self._pointer("last")
        if ckpts and (pointed is None or _iteration_of(ckpts[-1]) > _iteration_of(pointed)):
            return ckpts[-1]
        return pointed

    def best(self) -> Path | None:
        """The checkpoint last saved with is_best (None if none): pruning keeps it for evaluation."""
        return self._pointer("best")

    # -- saving --------------------------------------------------------------------------------
    def save(
        self,
        iteration: int,
        *,
        policy: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        scaler: Any = None,
        config_yaml: str = "",
        metrics: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
        is_best: bool = False,
    ) -> Path | None:
        """Write checkpoint `iteration` atomically; returns its dir (None on non-main ranks)."""
        if not self.is_main:
            return None
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"iter_{iteration:06d}"
        final = self.root / name
        tmp = self.root / f".tmp-{name}-{os.getpid()}-{time.time_ns()}"
        tmp.mkdir()
        try:
            save_policy(policy, tmp / "policy")
            torch.save(
                {
                    "iteration": iteration,
                    "optimizer": optimizer.state_dict() if optimizer is not None else None,
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "rng": rng_state(),
                    "metrics": metrics or {},
                    "extra": extra or {},
                },
                tmp / "trainer.pt",
            )
            (tmp / "config.yaml").write_text(config_yaml)
            meta = {"iteration": iteration, "metrics": metrics or {}, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
            _fsync_tree(tmp)
            if final.exists():  # same iteration saved again (e.g. preemption right after a periodic save)
                stale = self.root / f".tmp-stale-{name}-{time.time_ns()}"
                os.rename(final, stale)
                os.rename(tmp, final)
                shutil.rmtree(stale, ignore_errors=True)
            else:
                os.rename(tmp, final)
            _fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        write_json_atomic(self.root / "last.json", {"dir": name, "iteration": iteration})
        if is_best:
            write_json_atomic(self.root / "best.json", {"dir": name, "iteration": iteration, "metrics": metrics or {}})
        self._prune()
        return final

    def _prune(self) -> None:
        keep = {p.name for p in self.complete_checkpoints()[-self.keep_last :]}
        for ptr in ("best", "last"):
            if (p := self._pointer(ptr)) is not None:
                keep.add(p.name)
        for p in self.complete_checkpoints():
            if p.name not in keep:
                shutil.rmtree(p, ignore_errors=True)

    # -- loading -------------------------------------------------------------------------------
    @staticmethod
    def load(
        path: str | Path,
        *,
        policy: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        scaler: Any = None,
        restore_rng: bool = True,
    ) -> dict[str, Any]:
        """Restore a checkpoint dir into the given objects; returns iteration, metrics and extra state."""
        path = Path(path)
        trainer_file = path / "trainer.pt"
        if not (path / "meta.json").is_file() or not trainer_file.is_file():
            raise CheckpointError(f"{path} is not a complete checkpoint (meta.json/trainer.pt missing): pick another or resume=auto")
        state = torch.load(trainer_file, map_location="cpu", weights_only=False)
        load_policy(policy, path / "policy")
        if optimizer is not None and state["optimizer"] is not None:
            optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state["scheduler"] is not None:
            scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state["scaler"] is not None:
            scaler.load_state_dict(state["scaler"])
        if restore_rng:
            set_rng_state(state["rng"])
        return {"iteration": state["iteration"], "metrics": state["metrics"], "extra": state["extra"], "path": path}


def _iteration_of(path: Path) -> int:
    m = _ITER_RE.match(path.name)
    return int(m.group(1)) if m else -1


def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """Map checkpoint.resume (null | auto | a checkpoint dir | a run's output dir) to a checkpoint dir.

    `auto` with no checkpoint yet starts fresh (so a preempted job can always be
    relaunched with the same command); an explicit path that holds none is an error.
    """
    if resume is None:
        return None
    if resume == "auto":
        return Checkpointer(output_dir, is_main=False).latest()
    p = Path(resume).expanduser()
    if (p / "meta.json").is_file():
        return p
    for candidate in (p, p.parent):  # a run's output dir, or its checkpoints/ dir
        found = Checkpointer(candidate, is_main=False).latest() if (candidate / CKPT_DIRNAME).is_dir() else None
        if found is not None:
            return found
    raise CheckpointError(f"checkpoint.resume={resume} holds no complete checkpoint: use resume=auto, null or a checkpoints/iter_* dir")
