"""Time split of one RIPT-CFG iteration of the quick_test setting (configs/benchmark.yaml).

    .venv/bin/python benchmarks/iteration_profile.py [key=value ...]

Runs one iteration with evaluation at its end into a temporary directory and prints
collect / buffer / update / eval seconds, their share, and env steps/s.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))

from ript_cfg import main as train  # noqa: E402


def main(argv: list[str]) -> None:
    with tempfile.TemporaryDirectory() as out:
        summary = train(["--config-name", "benchmark", f"logging.output_dir={out}/run", *argv])
    m = summary["final_metrics"]
    total = m["time/iteration_s"]
    print(f"\none iteration of 'benchmark' ({m.get('train/episodes', 0):.0f} episodes, {m.get('data/env_frames', 0):.0f} decision steps):")
    for phase in ("collect", "buffer", "update", "eval"):
        t = m.get(f"time/{phase}_s", 0.0)
        print(f"  {phase:8s} {t:8.2f} s  {100 * t / total:5.1f} %")
    print(f"  {'total':8s} {total:8.2f} s;  env decision steps/s while collecting: {m['perf/env_steps_per_s']:.2f};  RSS {m['mem/rss_gib']:.2f} GiB")


if __name__ == "__main__":
    main(sys.argv[1:])
