"""Run health: system metrics every iteration and checks that name the likely fix.

A long run degrades quietly (a memory leak, a slowing simulator, a disk filling with
checkpoints, a policy collapsing) long before it crashes. `HealthMonitor.observe` sees
each iteration's metrics, keeps the short history the checks need (saved in every
checkpoint, so a resumed run judges against its whole past) and every `health.every`
iterations runs the checks below. A check that fires sets its `health/<name>` column
to 1, prints one console line with the fix, and appends an entry to `health.json`;
with `health.action=stop` the trainer checkpoints and stops with the reason.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import torch

from .checkpoint import write_json_atomic
from .config import HealthConfig

CHECKS = ("slow_env", "rss_growth", "gpu_growth", "gpu_full", "disk_low", "nonfinite", "no_groups", "success_drop", "env_restarts")
HEALTH_COLUMNS = [f"health/{name}" for name in CHECKS]
SYSTEM_COLUMNS = ["sys/cpu_process_pct", "sys/cpu_system_pct", "sys/load_1m", "sys/disk_free_gib",
                  "gpu/util_pct", "gpu/mem_used_gib", "gpu/mem_total_gib"]
# what one iteration's history row keeps (the checks read nothing else from the past)
HISTORY_KEYS = {"sps": "perf/sim_steps_per_s", "rss": "mem/rss_gib", "gpu": "mem/gpu_reserved_gib",
                "kept": "groups/kept", "restarts": "faults/env_restarts"}  # restarts: stored as this iteration's new ones
MAX_HISTORY = 200  # iterations kept: the "run's median" is over at most this many


@dataclass
class Finding:
    """One check that fired: what it measured against which threshold, and the fix."""

    iteration: int
    check: str
    value: float
    threshold: float
    message: str


def _num(value: Any) -> float:
    """A metric as a float (NaN when absent or not a number)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def dir_size_bytes(path: Path) -> int:
    """Bytes of the files under `path` (the last checkpoint's size predicts the next one's)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def disk_free_bytes(path: Path) -> int:
    """Free bytes on the file system holding `path` (a function so tests can shrink the disk)."""
    return shutil.disk_usage(path).free


class SystemStats:
    """CPU, load, disk and GPU figures for the CSV; pynvml (nvidia-ml-py) is optional and imported lazily."""

    def __init__(self, out_dir: Path, device: torch.device, log: Callable[[str], None]) -> None:
        self.out_dir, self.device, self.log = out_dir, device, log
        self.process = psutil.Process()
        self.process.cpu_percent(None)  # the first call starts the interval the next one measures
        psutil.cpu_percent(None)
        self._nvml: Any = None
        self._nvml_tried = False

    def metrics(self) -> dict[str, float]:
        """CPU % since the last call (this process, the machine), 1-minute load, free disk; GPU figures on CUDA."""
        out = {"sys/cpu_process_pct": self.process.cpu_percent(None), "sys/cpu_system_pct": psutil.cpu_percent(None),
               "sys/load_1m": psutil.getloadavg()[0], "sys/disk_free_gib": disk_free_bytes(self.out_dir) / 2**30}
        if self.device.type == "cuda" and torch.cuda.is_available():
            out["gpu/mem_total_gib"] = torch.cuda.get_device_properties(self.device).total_memory / 2**30
            out.update(self.nvml_metrics())
        return out

    def nvml_metrics(self) -> dict[str, float]:
        """Device-wide GPU utilisation and used memory (other processes included), when pynvml is there."""
        handle = self._nvml_handle()
        if handle is None:
            return {}
        import pynvml

        mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
        return {"gpu/util_pct": float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu), "gpu/mem_used_gib": mem.used / 2**30}

    def _nvml_handle(self) -> Any:
        if self._nvml_tried:
            return self._nvml
        self._nvml_tried = True
        try:
            import pynvml

            pynvml.nvmlInit()
            uuid = str(torch.cuda.get_device_properties(self.device).uuid)
            self._nvml = pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
        except Exception as err:  # not installed, no driver, an unknown uuid format
            self.log(f"note: GPU utilisation is not logged ({type(err).__name__}: {err}); install nvidia-ml-py for gpu/util_pct and gpu/mem_used_gib")
        return self._nvml


@dataclass
class _Check:
    """A check's verdict before it becomes a Finding: value, threshold, fired, message."""

    value: float
    threshold: float
    fired: bool
    message: str = ""


class HealthMonitor:
    """Keeps the checks' history and runs them; `stop_reason` is set when health.action=stop and one fired."""

    def __init__(self, cfg: HealthConfig, out_dir: Path, device: torch.device, log: Callable[[str], None], is_main: bool = True) -> None:
        self.cfg, self.out_dir, self.log, self.is_main = cfg, out_dir, log, is_main
        self.system = SystemStats(out_dir, device, log)
        self.history: list[dict[str, float]] = []
        self.best_success = float("nan")
        self.findings: list[dict[str, Any]] = []
        self.stop_reason: str | None = None
        self._restarts_seen = 0.0  # faults/env_restarts counts this process's restarts: it starts at 0 after a resume

    # -- resume ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps, so a resumed run is judged against its whole past."""
        return {"history": self.history, "best_success": self.best_success}

    def load_state_dict(self, state: dict[str, Any], iteration: int) -> None:
        """The history at the checkpoint; health.json keeps the entries up to that iteration."""
        self.history = [dict(row) for row in state.get("history", [])]
        self.best_success = float(state.get("best_success", float("nan")))
        path = self.out_dir / "health.json"
        if path.is_file():
            self.findings = [f for f in json.loads(path.read_text()).get("findings", []) if f["iteration"] <= iteration]

    # -- per iteration --------------------------------------------------------------------------
    def observe(self, it: int, metrics: dict[str, Any], last_checkpoint: Path | None) -> dict[str, float]:
        """System metrics and (every health.every iterations) the health/<check> columns for iteration `it`."""
        out = self.system.metrics()
        seen = {**metrics, **out}
        row = {k: _num(seen.get(key)) for k, key in HISTORY_KEYS.items()}
        if not math.isnan(row["restarts"]):
            row["restarts"], self._restarts_seen = max(row["restarts"] - self._restarts_seen, 0.0), row["restarts"]
        self.history = (self.history + [row])[-MAX_HISTORY:]
        success = _num(metrics.get("eval/success_rate"))
        if it % self.cfg.every == 0:
            ckpt_bytes = dir_size_bytes(last_checkpoint) if last_checkpoint is not None and last_checkpoint.is_dir() else 0
            verdicts = self.run_checks(seen, success, ckpt_bytes)
            out.update({f"health/{name}": float(v.fired) for name, v in verdicts.items()})
            fired = [Finding(it, name, v.value, v.threshold, v.message) for name, v in verdicts.items() if v.fired]
            self.report(fired)
        if not math.isnan(success):  # after the check: a collapse is measured against the best before it
            self.best_success = success if math.isnan(self.best_success) else max(self.best_success, success)
        return out

    def report(self, fired: list[Finding]) -> None:
        """Console lines, health.json, and the stop reason under health.action=stop."""
        for f in fired:
            self.log(f"[iter {f.iteration}] health/{f.check}: {f.message}")
            self.findings.append(vars(f))
        if fired and self.is_main:
            write_json_atomic(self.out_dir / "health.json", {"findings": self.findings})
        if fired and self.cfg.action == "stop" and self.stop_reason is None:
            self.stop_reason = f"health check {fired[0].check} at iteration {fired[0].iteration}: {fired[0].message}"

    def run_checks(self, seen: dict[str, Any], success: float, ckpt_bytes: int) -> dict[str, _Check]:
        """Every check's verdict on the history (its last row is this iteration) and this iteration's metrics."""
        return {"slow_env": self.slow_env(), "rss_growth": self.growth("rss", "RSS", self.cfg.rss_growth,
                                                                          "lower algo.buffer_iterations or check for a leak"),
                "gpu_growth": self.growth("gpu", "reserved GPU memory", self.cfg.gpu_growth,
                                          "check for tensors kept across iterations or lower algo.buffer_iterations"),
                "gpu_full": self.gpu_full(seen), "disk_low": self.disk_low(seen, ckpt_bytes), "nonfinite": self.nonfinite(seen),
                "no_groups": self.no_groups(), "success_drop": self.success_drop(success), "env_restarts": self.env_restarts()}

    # -- the checks -----------------------------------------------------------------------------
    def _series(self, key: str) -> list[float]:
        return [row[key] for row in self.history]

    def slow_env(self) -> _Check:
        """Env steps/s below health.slow_ratio x the run's median for the last health.slow_iterations iterations."""
        c, sps = self.cfg, [v for v in self._series("sps") if not math.isnan(v)]
        if len(sps) < c.min_history + c.slow_iterations:
            return _Check(float("nan"), c.slow_ratio, False)
        median = statistics.median(sps)
        ratio = max(sps[-c.slow_iterations:]) / median if median > 0 else float("nan")
        return _Check(ratio, c.slow_ratio, ratio < c.slow_ratio,
                      f"simulator steps/s at {ratio:.2f}x the run's median ({median:.3g}) for {c.slow_iterations} iterations "
                      f"(threshold {c.slow_ratio}x): check for other jobs on the machine, swapping, or lower env.num_envs")

    def growth(self, key: str, what: str, threshold: float, fix: str) -> _Check:
        """Relative growth of a memory figure over the last health.window iterations."""
        w = self.cfg.window
        series = self._series(key)[-w:]
        if len(series) < w or math.isnan(series[0]) or math.isnan(series[-1]) or series[0] <= 0:
            return _Check(float("nan"), threshold, False)
        rel = series[-1] / series[0] - 1
        return _Check(rel, threshold, rel > threshold, f"{what} grew {rel:.0%} over {w} iterations "
                      f"({series[0]:.2f} -> {series[-1]:.2f} GiB, threshold {threshold:.0%}): {fix}")

    def gpu_full(self, seen: dict[str, Any]) -> _Check:
        """Reserved GPU memory near the device's capacity (the next larger batch will not fit)."""
        frac = _num(seen.get("mem/gpu_reserved_gib")) / _num(seen.get("gpu/mem_total_gib"))
        t = self.cfg.gpu_capacity
        return _Check(frac, t, frac >= t, f"reserved GPU memory at {frac:.0%} of capacity (threshold {t:.0%}): "
                      "lower optim.minibatch_size, raise optim.grad_accum_steps or set policy.gradient_checkpointing=true")

    def disk_low(self, seen: dict[str, Any], ckpt_bytes: int) -> _Check:
        """Free disk in the output dir, counted in checkpoints of the last one's size."""
        t = self.cfg.disk_checkpoints
        if ckpt_bytes <= 0:
            return _Check(float("nan"), t, False)
        free_gib = _num(seen.get("sys/disk_free_gib"))
        n = free_gib * 2**30 / ckpt_bytes
        return _Check(n, t, n < t, f"free disk {free_gib:.2f} GiB holds {n:.1f} checkpoints of {ckpt_bytes / 2**20:.1f} MiB "
                      f"(threshold {t:g}): free space, lower checkpoint.keep_last or move logging.output_dir")

    def nonfinite(self, seen: dict[str, Any]) -> _Check:
        """Skipped non-finite update steps: the longest of the current streak and this iteration's count."""
        t = self.cfg.nonfinite_steps
        counts = [_num(seen.get(k)) for k in ("optim/nonfinite_streak", "optim/skipped_nonfinite")]
        n = max((v for v in counts if not math.isnan(v)), default=0.0)
        return _Check(n, t, n >= t, f"{n:.0f} non-finite loss steps skipped (threshold {t}): lower optim.lr, "
                      "keep optim.max_grad_norm small or set amp=off; the run stops at optim.max_consecutive_nonfinite")

    def no_groups(self) -> _Check:
        """Iterations in a row without an informative group (nothing to train on)."""
        t, n = self.cfg.no_groups_iterations, 0
        for kept in reversed(self._series("kept")):
            if kept != 0:
                break
            n += 1
        return _Check(n, t, n >= t, f"no informative group for {n} iterations (threshold {t}): every rollout of a context "
                      "agrees; raise algo.max_context_draws or algo.group_size, or use sampling.strategy=curriculum")

    def success_drop(self, success: float) -> _Check:
        """Held-out success this many points below the best evaluation so far."""
        t = self.cfg.success_drop
        drop = self.best_success - success
        return _Check(drop, t, drop >= t, f"held-out success {success:.2f} is {drop:.2f} below the best {self.best_success:.2f} "
                      f"(threshold {t}): lower optim.lr, raise algo.anchor_coef, or resume from the best checkpoint")

    def env_restarts(self) -> _Check:
        """Env rebuilds (worker deaths/hangs) within the last health.window iterations."""
        t = self.cfg.env_restarts
        n = sum(v for v in self._series("restarts")[-self.cfg.window:] if not math.isnan(v))
        return _Check(n, t, n >= t, f"env workers restarted {n:.0f} times in {self.cfg.window} iterations (threshold {t}): "
                      "check the workers' memory (dmesg for OOM kills), raise env.step_timeout_s or lower env.num_envs")
