"""Normalisation statistics for PI0's state and actions, and the maps they define.

PI0 sees states and emits actions in a normalised space; the statistics come
with the checkpoint. Two sources are read:
- openpi's `norm_stats.json`: {"norm_stats": {"state": {...}, "actions": {...}}}
  with mean/std/q01/q99 lists;
- a lerobot PI0 checkpoint directory: `policy_preprocessor.json` names the
  `normalizer_processor` step, whose safetensors file holds flat tensors
  "observation.state.mean", "action.std", ... (plus its eps and norm_map).

The formulas follow lerobot's NormalizerProcessorStep exactly:
    mean_std:  x_n = (x - mean) / (std + eps),      x = x_n * std + mean
    quantile:  x_n = 2 (x - q01) / d - 1,           x = (x_n + 1) d / 2 + q01
               with d = q99 - q01, replaced by eps where it is exactly 0.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

NormMode = Literal["mean_std", "quantile"]
NORM_MODES: tuple[str, ...] = ("mean_std", "quantile")
# lerobot's NormalizationMode values -> ours.
_LEROBOT_MODES = {"MEAN_STD": "mean_std", "QUANTILES": "quantile"}


def _vector(value: object, what: str, source: str) -> torch.Tensor:
    """A finite 1-D float32 tensor, or a one-line error naming the entry and file."""
    try:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().to(torch.float32).flatten()
        else:
            t = torch.as_tensor(value, dtype=torch.float32).flatten()
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: '{what}' is not a list of numbers ({err}); rewrite the statistics file") from None
    if t.numel() == 0:
        raise ValueError(f"{source}: '{what}' is empty; recompute the statistics")
    if not torch.isfinite(t).all():
        raise ValueError(f"{source}: '{what}' has NaN/inf entries; recompute the statistics")
    return t


def _normalize(x: torch.Tensor, mode: str, mean, std, q01, q99, eps: float) -> torch.Tensor:
    if mode == "mean_std":
        return (x - mean) / (std + eps)
    denom = torch.where(q99 - q01 == 0, torch.full_like(q99, eps), q99 - q01)
    return 2.0 * (x - q01) / denom - 1.0


def _unnormalize(x: torch.Tensor, mode: str, mean, std, q01, q99, eps: float) -> torch.Tensor:
    if mode == "mean_std":
        return x * std + mean
    denom = torch.where(q99 - q01 == 0, torch.full_like(q99, eps), q99 - q01)
    return (x + 1.0) * denom / 2.0 + q01


@dataclass(frozen=True, eq=False)
class NormStats:
    """State and action statistics of a PI0 checkpoint, and how each is normalised.

    Vectors are 1-D float32 tensors in the raw (unpadded) dimensions: state 8
    and action 7 for LIBERO. Longer vectors (statistics stored padded) are
    sliced to the data's width when used, the way openpi does; shorter ones
    are an error. q01/q99 may be None when only mean_std is used.
    """

    state_mean: torch.Tensor
    state_std: torch.Tensor
    action_mean: torch.Tensor
    action_std: torch.Tensor
    state_q01: torch.Tensor | None = None
    state_q99: torch.Tensor | None = None
    action_q01: torch.Tensor | None = None
    action_q99: torch.Tensor | None = None
    state_mode: NormMode = "mean_std"
    action_mode: NormMode = "mean_std"
    eps: float = 1e-8

    def __post_init__(self) -> None:
        for mode_name in ("state_mode", "action_mode"):
            if getattr(self, mode_name) not in NORM_MODES:
                raise ValueError(f"NormStats.{mode_name}={getattr(self, mode_name)!r}; use one of {NORM_MODES}")
        for part in ("state", "action"):
            names = ("mean", "std", "q01", "q99")
            vecs = {n: getattr(self, f"{part}_{n}") for n in names}
            for n, v in vecs.items():
                if v is not None:
                    object.__setattr__(self, f"{part}_{n}", _vector(v, f"{part}_{n}", "NormStats"))
            sizes = {n: getattr(self, f"{part}_{n}").numel() for n in names if getattr(self, f"{part}_{n}") is not None}
            if len(set(sizes.values())) != 1:
                raise ValueError(f"NormStats: {part} statistics have different sizes {sizes}; they must all match")
            if (vecs["q01"] is None) != (vecs["q99"] is None):
                raise ValueError(f"NormStats: give both {part}_q01 and {part}_q99 or neither")
            if getattr(self, f"{part}_mode") == "quantile" and vecs["q01"] is None:
                raise ValueError(f"NormStats: {part}_mode='quantile' needs {part}_q01/{part}_q99; load statistics that have them or use 'mean_std'")
        if not (self.eps >= 0 and math.isfinite(self.eps)):
            raise ValueError(f"NormStats.eps={self.eps} must be a finite number >= 0")

    # ----------------------------------------------------------------- maps
    def _params(self, part: str, dim: int, like: torch.Tensor):
        mean = getattr(self, f"{part}_mean")
        if mean.numel() < dim:
            raise ValueError(f"NormStats: {part} statistics have {mean.numel()} dims but the data has {dim}; load statistics for this robot")
        out = []
        for n in ("mean", "std", "q01", "q99"):
            v = getattr(self, f"{part}_{n}")
            out.append(None if v is None else v[:dim].to(device=like.device, dtype=like.dtype))
        return out

    def normalize_state(self, state: torch.Tensor) -> torch.Tensor:
        """Raw state [..., D] -> normalised state (D = raw state width)."""
        return _normalize(state, self.state_mode, *self._params("state", state.shape[-1], state), self.eps)

    def unnormalize_state(self, state: torch.Tensor) -> torch.Tensor:
        """Inverse of `normalize_state`."""
        return _unnormalize(state, self.state_mode, *self._params("state", state.shape[-1], state), self.eps)

    def normalize_action(self, action: torch.Tensor) -> torch.Tensor:
        """Raw action [..., D] -> normalised action (what the policy is trained to output)."""
        return _normalize(action, self.action_mode, *self._params("action", action.shape[-1], action), self.eps)

    def unnormalize_action(self, action: torch.Tensor) -> torch.Tensor:
        """Normalised policy action [..., D] -> raw action (before clipping)."""
        return _unnormalize(action, self.action_mode, *self._params("action", action.shape[-1], action), self.eps)

    def with_mode(self, mode: NormMode) -> NormStats:
        """The same statistics normalised with `mode` for both state and action."""
        kwargs = {f: getattr(self, f) for f in self.__dataclass_fields__}
        kwargs.update(state_mode=mode, action_mode=mode)
        return NormStats(**kwargs)

    def lerobot_stats(self) -> dict[str, dict[str, torch.Tensor]]:
        """Mean/std in lerobot's layout ({"observation.state": {...}, "action": {...}}), as a checkpoint stores them."""
        return {
            "observation.state": {"mean": self.state_mean, "std": self.state_std},
            "action": {"mean": self.action_mean, "std": self.action_std},
        }

    @classmethod
    def identity(cls, state_dim: int = 8, action_dim: int = 7) -> NormStats:
        """Statistics that leave values unchanged: for a policy trained from scratch on raw LIBERO values."""
        return cls(torch.zeros(state_dim), torch.ones(state_dim), torch.zeros(action_dim), torch.ones(action_dim))

    # -------------------------------------------------------------- loaders
    @classmethod
    def from_openpi_json(cls, path: str | Path, mode: NormMode = "mean_std", eps: float = 1e-8) -> NormStats:
        """Read openpi's `norm_stats.json` (keys norm_stats/state|actions/mean|std|q01|q99).

        openpi stores no normalisation mode: PI0 uses mean_std, PI0.5 quantile.
        """
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read openpi norm stats {path}: {err}; pass the norm_stats.json saved with the checkpoint") from None
        stats = raw.get("norm_stats", raw) if isinstance(raw, dict) else None
        if not isinstance(stats, dict) or "state" not in stats or "actions" not in stats:
            raise ValueError(f"{path}: expected {{'norm_stats': {{'state': ..., 'actions': ...}}}}; pass an openpi norm_stats.json")
        kw: dict[str, object] = {}
        for ours, theirs in (("state", "state"), ("action", "actions")):
            entry = stats[theirs]
            if not isinstance(entry, dict):
                raise ValueError(f"{path}: 'norm_stats.{theirs}' must be an object with mean/std/q01/q99")
            for n in ("mean", "std"):
                if n not in entry:
                    raise ValueError(f"{path}: 'norm_stats.{theirs}' has no '{n}'; recompute the statistics with openpi's compute_norm_stats")
            for n in ("mean", "std", "q01", "q99"):
                if entry.get(n) is not None:
                    kw[f"{ours}_{n}"] = _vector(entry[n], f"norm_stats.{theirs}.{n}", str(path))
        return cls(**kw, state_mode=mode, action_mode=mode, eps=eps)  # type: ignore[arg-type]

    @classmethod
    def from_lerobot_checkpoint(cls, directory: str | Path) -> NormStats:
        """Read the statistics, modes and eps a lerobot PI0 checkpoint's preprocessor saved.

        Looks for `policy_preprocessor.json`, takes its `normalizer_processor`
        step (config: eps, norm_map; state_file: safetensors with
        "observation.state.<stat>" and "action.<stat>"). If the action entries
        are missing there, `policy_postprocessor.json`'s unnormalizer is used.
        """
        from safetensors.torch import load_file

        directory = Path(directory)
        tensors: dict[str, torch.Tensor] = {}
        config: dict = {}
        for pipeline, step_name in (("policy_preprocessor", "normalizer_processor"), ("policy_postprocessor", "unnormalizer_processor")):
            cfg_path = directory / f"{pipeline}.json"
            if not cfg_path.is_file():
                if pipeline == "policy_preprocessor":
                    raise ValueError(f"{directory}: no policy_preprocessor.json; pass a lerobot PI0 checkpoint directory (saved with save_pretrained)")
                continue
            try:
                pipe_cfg = json.loads(cfg_path.read_text())
                step = next(s for s in pipe_cfg["steps"] if s.get("registry_name") == step_name)
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"cannot read {cfg_path}: {err!r}; re-save the checkpoint's processors with lerobot") from None
            except StopIteration:
                if pipeline == "policy_preprocessor":
                    raise ValueError(f"{cfg_path}: no '{step_name}' step; the checkpoint was saved without normalisation statistics") from None
                continue
            config = config or step.get("config", {})
            state_file = step.get("state_file")
            if state_file is None:
                continue
            try:
                loaded = load_file(str(directory / state_file))
            except Exception as err:  # safetensors raises several types for missing/corrupt files
                raise ValueError(f"cannot read {directory / state_file}: {err}; the checkpoint is incomplete, copy it again") from None
            for k, v in loaded.items():
                tensors.setdefault(k, v)
        norm_map = config.get("norm_map", {})
        modes = {}
        for part, ftype in (("state", "STATE"), ("action", "ACTION")):
            lerobot_mode = norm_map.get(ftype, "MEAN_STD")
            if lerobot_mode not in _LEROBOT_MODES:
                raise ValueError(f"{directory}: {ftype} normalisation '{lerobot_mode}' is not supported; use a checkpoint with MEAN_STD or QUANTILES")
            modes[f"{part}_mode"] = _LEROBOT_MODES[lerobot_mode]
        kw: dict[str, object] = {}
        for ours, theirs in (("state", "observation.state"), ("action", "action")):
            for n in ("mean", "std", "q01", "q99"):
                key = f"{theirs}.{n}"
                if key in tensors:
                    kw[f"{ours}_{n}"] = _vector(tensors[key], key, str(directory))
                elif n in ("mean", "std"):
                    raise ValueError(f"{directory}: statistics have no '{key}'; the checkpoint was trained without {theirs} statistics, pass an openpi norm_stats.json instead")
        return cls(**kw, **modes, eps=float(config.get("eps", 1e-8)))  # type: ignore[arg-type]
