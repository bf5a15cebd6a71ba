"""Health checks: each condition injected into a synthetic metric stream fires its check (and no other),
the history survives a resume, and toy runs through the trainer: a normal one fires none, an injected
full disk with health.action=stop stops the run with a checkpoint and the reason."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "recipes"))

from ript_cfg import main  # noqa: E402

from ript.recipes.training import health  # noqa: E402
from ript.recipes.training.config import ConfigError, HealthConfig, load_config  # noqa: E402
from ript.recipes.training.health import CHECKS, HEALTH_COLUMNS, SYSTEM_COLUMNS, HealthMonitor  # noqa: E402

NORMAL = {"perf/sim_steps_per_s": 100.0, "mem/rss_gib": 2.0, "groups/kept": 2, "faults/env_restarts": 0,
          "optim/nonfinite_streak": 0, "optim/skipped_nonfinite": 0}
SYSTEM = {"sys/cpu_process_pct": 50.0, "sys/cpu_system_pct": 60.0, "sys/load_1m": 1.0, "sys/disk_free_gib": 100.0}


def _monitor(tmp_path: Path, lines: list[str], system: dict[str, float] | None = None, **cfg: Any) -> HealthMonitor:
    """A monitor whose system figures are fixed (no psutil noise) and whose console lines land in `lines`."""
    monitor = HealthMonitor(HealthConfig(**cfg), tmp_path, torch.device("cpu"), lines.append)
    monitor.system.metrics = lambda: dict(system or SYSTEM)  # type: ignore[method-assign]
    return monitor


def _drive(monitor: HealthMonitor, rows: list[dict[str, Any]], ckpt: Path | None = None, start: int = 1) -> list[dict[str, float]]:
    return [monitor.observe(start + i, {**NORMAL, **row}, ckpt) for i, row in enumerate(rows)]


def _ramp(key: str, a: float, b: float, n: int) -> list[dict[str, float]]:
    return [{key: a + (b - a) * i / (n - 1)} for i in range(n)]


CASES = {  # check -> (rows, 1-based row at which it first fires, system figures)
    "slow_env": ([{}] * 12 + [{"perf/sim_steps_per_s": 30.0}] * 3, 15, None),
    "rss_growth": ([{}] * 5 + _ramp("mem/rss_gib", 2.0, 2.54, 10), 15, None),
    "gpu_growth": ([{"mem/gpu_reserved_gib": 10.0}] * 5 + _ramp("mem/gpu_reserved_gib", 10.0, 12.7, 10), 15,
                   {**SYSTEM, "gpu/mem_total_gib": 80.0}),
    "gpu_full": ([{"mem/gpu_reserved_gib": 70.0}, {"mem/gpu_reserved_gib": 78.0}], 2, {**SYSTEM, "gpu/mem_total_gib": 80.0}),
    "disk_low": ([{}], 1, {**SYSTEM, "sys/disk_free_gib": 2.0 / 1024}),  # 2 MiB free, 1 MiB checkpoints
    "nonfinite": ([{"optim/nonfinite_streak": 2}, {"optim/skipped_nonfinite": 3}], 2, None),
    "no_groups": ([{"groups/kept": 0}] * 3, 3, None),
    "success_drop": ([{"eval/success_rate": 0.5}, {"eval/success_rate": 0.8}, {"eval/success_rate": 0.6}, {"eval/success_rate": 0.4}], 4, None),
    "env_restarts": ([{"faults/env_restarts": 1}, {"faults/env_restarts": 1}, {"faults/env_restarts": 2}], 3, None),  # from the start
}


@pytest.mark.parametrize("check", CHECKS)
def test_each_injected_condition_fires_its_check_only(tmp_path: Path, check: str) -> None:
    ckpt = tmp_path / "checkpoints" / "iter_000001"
    ckpt.mkdir(parents=True)
    (ckpt / "weights").write_bytes(b"\0" * 2**20)
    rows, fires_at, system = CASES[check]
    lines: list[str] = []
    outs = _drive(_monitor(tmp_path, lines, system), rows, ckpt)
    assert [o[f"health/{check}"] for o in outs] == [0.0] * (fires_at - 1) + [1.0] * (len(rows) - fires_at + 1)
    assert all(o[c] == 0.0 for o in outs for c in HEALTH_COLUMNS if c != f"health/{check}"), outs[-1]
    assert len(lines) == len(rows) - fires_at + 1 and f"health/{check}" in lines[0] and ": " in lines[0].split("threshold")[-1]
    entries = json.loads((tmp_path / "health.json").read_text())["findings"]
    assert entries[0]["iteration"] == fires_at and entries[0]["check"] == check
    assert {"value", "threshold", "message"} <= entries[0].keys()


def test_no_fix_is_missing_and_warn_does_not_stop(tmp_path: Path) -> None:
    lines: list[str] = []
    monitor = _monitor(tmp_path, lines)
    _drive(monitor, [{"groups/kept": 0}] * 3)
    assert monitor.stop_reason is None
    assert "raise algo.max_context_draws" in lines[0]


def test_stop_action_and_every(tmp_path: Path) -> None:
    monitor = _monitor(tmp_path, [], action="stop", every=2)
    outs = _drive(monitor, [{"groups/kept": 0}] * 4)
    assert "health/no_groups" not in outs[0] and "health/no_groups" not in outs[2]  # checked on even iterations only
    assert outs[1]["health/no_groups"] == 0.0 and outs[3]["health/no_groups"] == 1.0
    assert monitor.stop_reason is not None and monitor.stop_reason.startswith("health check no_groups at iteration 4")
    assert all(k in outs[0] for k in ("sys/disk_free_gib", "sys/load_1m"))  # system figures every iteration


def test_history_survives_resume(tmp_path: Path) -> None:
    first = _monitor(tmp_path, [])
    _drive(first, [{}] * 12 + [{"perf/sim_steps_per_s": 30.0}] * 2)
    (tmp_path / "health.json").write_text(json.dumps({"findings": [{"iteration": 14, "check": "x"}, {"iteration": 15, "check": "y"}]}))
    saved = json.loads(json.dumps(first.state_dict()))  # what a checkpoint keeps
    resumed, fresh = _monitor(tmp_path, []), _monitor(tmp_path, [])
    resumed.load_state_dict(saved, iteration=14)
    assert [f["iteration"] for f in resumed.findings] == [14]  # entries after the checkpoint are dropped
    assert _drive(resumed, [{"perf/sim_steps_per_s": 30.0}], start=15)[0]["health/slow_env"] == 1.0
    assert _drive(fresh, [{"perf/sim_steps_per_s": 30.0}], start=15)[0]["health/slow_env"] == 0.0  # no history: cannot judge


def test_env_restarts_count_across_a_resume(tmp_path: Path) -> None:
    first = _monitor(tmp_path, [])
    assert _drive(first, [{"faults/env_restarts": 1}])[0]["health/env_restarts"] == 0.0
    resumed = _monitor(tmp_path, [])
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())), iteration=1)
    # the new process counts its restarts from 0 again: its first one is the run's second in the window
    assert _drive(resumed, [{"faults/env_restarts": 0}, {"faults/env_restarts": 1}], start=2)[-1]["health/env_restarts"] == 1.0


def test_system_metrics_without_gpu_or_pynvml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lines: list[str] = []
    stats = health.SystemStats(tmp_path, torch.device("cpu"), lines.append)
    out = stats.metrics()
    assert set(out) == {"sys/cpu_process_pct", "sys/cpu_system_pct", "sys/load_1m", "sys/disk_free_gib"} <= set(SYSTEM_COLUMNS)
    assert out["sys/disk_free_gib"] > 0 and all(v >= 0 for v in out.values())
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError, as on a machine without it
    assert stats.nvml_metrics() == {} and stats.nvml_metrics() == {}
    assert len(lines) == 1 and "nvidia-ml-py" in lines[0]  # said once


@pytest.mark.parametrize("override", ["health.action=halt", "health.every=0", "health.slow_ratio=1.5", "health.window=1",
                                      "health.rss_growth=0", "health.success_drop=0"])
def test_bad_health_config_is_one_line(override: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config("toy", [override])
    assert "\n" not in str(info.value) and override.split("=")[0] in str(info.value)


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_normal_toy_run_fires_nothing_and_resume_keeps_the_history(tmp_path: Path) -> None:
    args = ["--config-name", "toy", f"logging.output_dir={tmp_path}", "checkpoint.keep_last=10"]
    main([*args, "train.iterations=2"])
    out = main([*args, "train.iterations=4", "checkpoint.resume=auto"])
    rows = _csv(out["metrics_csv"])
    assert [r["iteration"] for r in rows] == ["1", "2", "3", "4"]
    assert all(r[c] == "0.0" for r in rows for c in HEALTH_COLUMNS), [{c: r[c] for c in HEALTH_COLUMNS} for r in rows]
    assert all(float(r["sys/disk_free_gib"]) > 0 and r["sys/load_1m"] for r in rows)
    assert not (tmp_path / "health.json").exists()
    extra = torch.load(out["last_checkpoint"] / "trainer.pt", weights_only=False)["extra"]
    assert len(extra["health"]["history"]) == 4  # 2 rows from before the resume, carried by the checkpoint


def test_injected_full_disk_stops_the_run_with_a_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(health, "disk_free_bytes", lambda path: 1024)  # 1 KiB free for the monitor (preflight sees the real disk)
    out = main(["--config-name", "toy", f"logging.output_dir={tmp_path}", "train.iterations=4", "health.action=stop"])
    assert out["iterations"] == 2 and "health check disk_low at iteration 2" in out["stopped"]  # iteration 1 has no checkpoint to size
    assert out["last_checkpoint"].name == "iter_000002"
    assert [r["health/disk_low"] for r in _csv(out["metrics_csv"])] == ["0.0", "1.0"]
    entries = json.loads((tmp_path / "health.json").read_text())["findings"]
    assert [(e["iteration"], e["check"]) for e in entries] == [(2, "disk_low")] and entries[0]["value"] < entries[0]["threshold"]
    assert "health/disk_low: free disk" in capsys.readouterr().out
