"""Time split of one RIPT-CFG iteration of the quick_test setting (configs/benchmark.yaml).

    .venv/bin/python benchmarks/iteration_profile.py [overrides=[env.num_envs=1,algo.group_size=4]] [--dry-run]

Runs one iteration with evaluation at its end into a temporary directory and prints
collect / buffer / update / eval seconds, their share, and env steps/s. `overrides` are
the trainer's own `section.key=value` overrides of configs/benchmark.yaml, validated by
the trainer's schema (also by --dry-run).
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))

from ript_cfg import main as train  # noqa: E402

from ript.recipes.training.cli import run_cli  # noqa: E402
from ript.recipes.training.config import load_config  # noqa: E402

CONFIG_NAME = "benchmark"


@dataclass
class ProfileConfig:
    overrides: list[str] = field(default_factory=list)  # trainer overrides of configs/benchmark.yaml, e.g. [env.num_envs=1]


def validate(cfg: ProfileConfig) -> None:
    """The trainer's own validation of the overrides (ConfigError on an unknown key or a bad value)."""
    load_config(CONFIG_NAME, cfg.overrides)


def profile(cfg: ProfileConfig) -> None:
    """One iteration of the benchmark config in a temporary directory; print its time split."""
    with tempfile.TemporaryDirectory() as out:
        summary = train(["--config-name", CONFIG_NAME, f"logging.output_dir={out}/run", *cfg.overrides])
    m = summary["final_metrics"]
    total = m["time/iteration_s"]
    print(f"\none iteration of 'benchmark' ({m.get('train/episodes', 0):.0f} episodes, {m.get('data/env_frames', 0):.0f} decision steps):")
    for phase in ("collect", "buffer", "update", "eval"):
        t = m.get(f"time/{phase}_s", 0.0)
        print(f"  {phase:8s} {t:8.2f} s  {100 * t / total:5.1f} %")
    print(f"  {'total':8s} {total:8.2f} s;  simulator steps/s while collecting: {m['perf/sim_steps_per_s']:.1f};  RSS {m['mem/rss_gib']:.2f} GiB")



def main(argv: list[str] | None = None) -> None:
    """Command-line entry: key=value settings, --dry-run, -h."""
    run_cli(ProfileConfig, profile, argv, validate=validate, description=__doc__)


if __name__ == "__main__":
    main()
