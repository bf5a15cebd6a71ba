"""Soak test: run the recipe for a fixed wall time and report memory growth after warm-up.

    .venv/bin/python benchmarks/soak.py config=toy minutes=10 [warmup_minutes=2] [overrides=[key=value,...]]
    .venv/bin/python benchmarks/soak.py config=quick_test minutes=5 overrides=[env.num_envs=2]

A real run in a subprocess (iterations unbounded, checkpoints rare, no videos), its
process tree's RSS (trainer + env workers) sampled every few seconds; at the end it
is stopped with SIGTERM, which also exercises preemption (exit code 0 expected).
Prints RSS of the trainer and of the whole tree at the end of warm-up and at the end,
their growth in percent (target: <= 5 % over 30 minutes), iterations, env steps/s,
and the per-iteration trend from the run's CSV (mem/rss_gib) as GiB per 100 iterations.
"""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from ript.recipes.training.cli import run_cli
from ript.recipes.training.config import ConfigError, available_configs, load_config

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class SoakConfig:
    config: str = "toy"  # the trainer's --config-name
    minutes: float = 10.0  # wall time of the run
    warmup_minutes: float | None = None  # default: 20% of minutes
    sample_s: float = 5.0  # seconds between RSS samples
    overrides: list[str] = field(default_factory=list)  # trainer overrides, e.g. [env.num_envs=2]


def validate(cfg: SoakConfig) -> None:
    """Times, and the trainer's own validation of config + overrides, before the run starts."""
    if cfg.minutes <= 0 or cfg.sample_s <= 0 or (cfg.warmup_minutes is not None and cfg.warmup_minutes < 0):
        raise ConfigError("minutes and sample_s must be > 0 and warmup_minutes >= 0")
    if cfg.config not in available_configs():
        raise ConfigError(f"config={cfg.config!r} is unknown: pick config= from {available_configs()}")
    load_config(cfg.config, cfg.overrides)


def tree_rss(proc: psutil.Process) -> tuple[float, float]:
    """(trainer RSS, trainer + children RSS) in GiB."""
    try:
        own = proc.memory_info().rss
        kids = sum(c.memory_info().rss for c in proc.children(recursive=True) if c.is_running())
    except psutil.Error:
        return float("nan"), float("nan")
    return own / 2**30, (own + kids) / 2**30


def slope_per_100(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs, times 100."""
    n = len(xs)
    if n < 2:
        return float("nan")
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return 100 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else float("nan")


def soak(args: SoakConfig) -> int:
    """Run the recipe for `minutes`, sampling RSS; print growth after warm-up. 0 if the run ended cleanly."""
    warmup_s = 60 * (args.warmup_minutes if args.warmup_minutes is not None else 0.2 * args.minutes)
    total_s = 60 * args.minutes
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [
            sys.executable, str(ROOT / "recipes" / "ript_cfg.py"), "--config-name", args.config,
            f"logging.output_dir={out}", "train.iterations=1000000", "checkpoint.every=1000000", "eval.every=1000000",
            "logging.video_every=0", "logging.progress=false", *args.overrides,
        ]  # fmt: skip
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        ps = psutil.Process(proc.pid)
        samples: list[tuple[float, float, float]] = []
        while time.monotonic() - start < total_s and proc.poll() is None:
            time.sleep(args.sample_s)
            samples.append((time.monotonic() - start, *tree_rss(ps)))
        if proc.poll() is not None:
            print(f"the run ended early (exit {proc.returncode}):\n{proc.stderr.read()[-3000:]}")
            return 1
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        rows = list(csv.DictReader(open(out / "metrics.csv"))) if (out / "metrics.csv").is_file() else []
    warm = [s for s in samples if s[0] >= warmup_s]
    if len(warm) < 2:
        print("too few samples after warm-up: run longer or shorten warmup_minutes")
        return 1
    (t0, own0, all0), (t1, own1, all1) = warm[0], warm[-1]
    print(f"soak of '{args.config}' {' '.join(args.overrides)}: {t1 / 60:.1f} min, warm-up {warmup_s / 60:.1f} min, "
          f"{len(rows)} iterations, SIGTERM exit code {proc.returncode}")
    print(f"  trainer RSS      {own0:.3f} -> {own1:.3f} GiB  growth {100 * (own1 / own0 - 1):+.2f} %  (over {(t1 - t0) / 60:.1f} min)")
    print(f"  process tree RSS {all0:.3f} -> {all1:.3f} GiB  growth {100 * (all1 / all0 - 1):+.2f} %")
    print(f"  peak tree RSS after warm-up {max(s[2] for s in warm):.3f} GiB")
    if rows:
        warm_rows = [r for r in rows if r.get("mem/rss_gib")][len(rows) // 5 :]
        xs = [float(r["iteration"]) for r in warm_rows]
        ys = [float(r["mem/rss_gib"]) for r in warm_rows]
        sps = [float(r["perf/sim_steps_per_s"]) for r in warm_rows if r.get("perf/sim_steps_per_s")]
        faults = sum(int(float(r.get("faults/env_faults") or 0)) for r in rows)
        print(f"  CSV trainer RSS trend after warm-up: {slope_per_100(xs, ys) * 1024:+.2f} MiB per 100 iterations; "
              f"env steps/s median {sorted(sps)[len(sps) // 2] if sps else float('nan'):.1f}; env faults {faults}")
    growth = 100 * (all1 / all0 - 1)
    print(f"  target <= 5 % over 30 min: {'met' if growth <= 5 else 'NOT met'} here ({growth:+.2f} % over {(t1 - t0) / 60:.1f} min)")
    return 0 if proc.returncode == 0 else 1


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: key=value settings, --dry-run, -h."""
    return run_cli(SoakConfig, soak, argv, validate=validate, description=__doc__) or 0


if __name__ == "__main__":
    raise SystemExit(main())
