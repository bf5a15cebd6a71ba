"""Metrics out of the recipe: console lines, progress bars, CSV, wandb.

One `MetricLogger` per run; only the main rank writes (other ranks get a logger
whose methods do nothing, so the recipe needs no `if rank == 0` around logging).
CSV: one row per iteration with columns fixed when the file is created (the
`columns` given up front, then the first row's keys; later keys go to wandb only
and are named once on the console), empty cells where an iteration has no value
(e.g. eval columns between evaluations); on resume
the existing file is appended to with its own header, so the file stays one table.
wandb: online / offline / disabled; its files live under `<output_dir>/wandb` and the
run id is kept in `<output_dir>/wandb_run_id` so a resumed run continues the same
wandb run.
"""

from __future__ import annotations

import csv
import math
import os
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import psutil
import torch

T = TypeVar("T")


SUMMARY_KEYS = {
    "train/success_rate": "train_success",
    "groups/kept": "kept",
    "groups/dropped": "dropped",
    "loss/total": "loss",
    "optim/grad_norm_preclip": "grad_norm_preclip",
    "optim/lr": "lr",
    "eval/success_rate": "eval_success",
    "time/iteration_s": "s",
}


def memory_stats(device: torch.device | None = None) -> dict[str, float]:
    """Process RSS and (on CUDA) peak allocated GPU memory, in GiB."""
    out = {"mem/rss_gib": psutil.Process().memory_info().rss / 2**30}
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        out["mem/gpu_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        out["mem/gpu_reserved_gib"] = torch.cuda.memory_reserved(device) / 2**30
    return out


class PhaseTimer:
    """Wall time per named phase of an iteration: `with timer("collect"): ...`."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - start

    def metrics(self) -> dict[str, float]:
        """Seconds per phase and their sum, as log keys, to see where an iteration goes."""
        out = {f"time/{k}_s": v for k, v in self.times.items()}
        out["time/iteration_s"] = sum(self.times.values())
        return out

    def reset(self) -> None:
        """Start the next iteration from zero (phases add up within one)."""
        self.times.clear()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.4g}"
    return str(v)


class MetricLogger:
    """Console + CSV + wandb sink for per-iteration metrics."""

    def __init__(
        self,
        output_dir: str | Path,
        *,
        csv_enabled: bool = True,
        wandb_mode: str = "disabled",
        project: str = "ript",
        run_name: str | None = None,
        config: dict[str, Any] | None = None,
        progress: bool = True,
        is_main: bool = True,
        columns: Iterable[str] = (),
        summary_keys: dict[str, str] | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.is_main = is_main
        self.progress_enabled = progress and is_main
        self.summary_keys = summary_keys if summary_keys is not None else dict(SUMMARY_KEYS)
        self.columns = list(columns)  # CSV columns known up front (metrics that only some iterations have)
        self.csv_path: Path | None = self.output_dir / "metrics.csv" if csv_enabled and is_main else None
        self._csv_columns: list[str] | None = None
        self._warned: set[str] = set()
        self._wandb = None
        if self.csv_path is not None and self.csv_path.is_file():
            with open(self.csv_path, newline="") as f:
                header = next(csv.reader(f), None)
            self._csv_columns = header or None
        if is_main and wandb_mode != "disabled":
            self._wandb = _init_wandb(self.output_dir, wandb_mode, project, run_name, config)

    # -- progress ------------------------------------------------------------------------------
    def progress(self, iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "") -> Any:
        """A tqdm bar (a silent one when progress is off or on non-main ranks)."""
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, leave=False, disable=not self.progress_enabled, file=sys.stderr, dynamic_ncols=True)

    def info(self, msg: str) -> None:
        """A console line from the main rank."""
        if self.is_main:
            print(msg, flush=True)

    # -- metrics -------------------------------------------------------------------------------
    def log(self, iteration: int, metrics: dict[str, Any]) -> None:
        """One summary line, one CSV row, one wandb step."""
        if not self.is_main:
            return
        row = {"iteration": iteration, **{k: _scalar(v) for k, v in metrics.items()}}
        summary = " ".join(f"{label}={_fmt(row[k])}" for k, label in self.summary_keys.items() if k in row)
        self.info(f"[iter {iteration}] {summary}")
        if self.csv_path is not None:
            self._write_csv(row)
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if k != "iteration"}, step=iteration)

    def _write_csv(self, row: dict[str, Any]) -> None:
        assert self.csv_path is not None
        new_file = self._csv_columns is None
        if new_file:
            self._csv_columns = ["iteration", *[c for c in self.columns if c != "iteration"]]
            self._csv_columns += [k for k in row if k not in self._csv_columns]
        extra = [k for k in row if k not in self._csv_columns and k not in self._warned]  # type: ignore[operator]
        if extra:
            self._warned.update(extra)
            self.info(f"note: metrics {extra} are not CSV columns of {self.csv_path} (set by the first row); they go to wandb only")
        self.csv_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.csv_path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self._csv_columns, extrasaction="ignore")  # type: ignore[arg-type]
            if new_file:
                writer.writeheader()
            writer.writerow(row)

    def log_video(self, iteration: int, path: str | Path, key: str = "video/rollouts") -> None:
        """Uploads a rollout video to wandb (rank 0 only); the file on disk is the CSV run's record."""
        if self._wandb is not None and self.is_main:
            import wandb

            self._wandb.log({key: wandb.Video(str(path), format="mp4")}, step=iteration)

    def log_image(self, path: str | Path, key: str) -> None:
        """Uploads a plot to wandb (rank 0 only), without a step: plots summarise the run."""
        if self._wandb is not None and self.is_main:
            import wandb

            self._wandb.log({key: wandb.Image(str(path))})

    def close(self) -> None:
        """Finishes the wandb run so its last metrics are flushed; safe to call twice."""
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _scalar(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.detach().float().mean().item() if v.numel() else float("nan")
    return v


def _init_wandb(output_dir: Path, mode: str, project: str, run_name: str | None, config: dict[str, Any] | None) -> Any:
    import wandb

    output_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_DIR", str(output_dir))
    os.environ.setdefault("WANDB_SILENT", "true")
    id_file = output_dir / "wandb_run_id"
    run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:8]
    id_file.write_text(run_id)
    return wandb.init(
        project=project,
        name=run_name,
        id=run_id,
        resume="allow",
        mode=mode,
        dir=str(output_dir),
        config=config,
        settings=wandb.Settings(console="off", x_disable_stats=True) if hasattr(wandb, "Settings") else None,
    )
