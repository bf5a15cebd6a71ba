"""benchmarks/fixture_placement.py's statistics, on made-up outcomes (the episodes themselves cost minutes)."""

from __future__ import annotations

import json

import pytest


def test_informative_groups_and_variances(import_benchmark, tmp_path):
    bench = import_benchmark("fixture_placement")
    assert bench.informative_fraction([True] * 5, 4) == 0.0
    assert bench.informative_fraction([True, False, False, False, False], 4) == pytest.approx(4 / 5)  # one group of 5 lacks it
    assert bench.informative_fraction([True, True, False, False, False], 4) == 1.0
    outcomes = {40: [True, True, True, True, True], 41: [True, False, False, False, False]}
    for s, oks in outcomes.items():
        (tmp_path / f"pinned__libero_goal_8__{s}.json").write_text(json.dumps({"outcomes": oks}))
    summary = bench.summarise(tmp_path, ["libero_goal:8", "libero_spatial:2"], [40, 41, 42], 5, 4)
    assert list(summary["modes"]) == ["pinned"]  # upstream has no finished part yet
    goal = summary["modes"]["pinned"]["per_task"]["libero_goal:8"]
    assert "libero_spatial:2" not in summary["modes"]["pinned"]["per_task"]
    assert goal["episodes"] == 10 and goal["success"] == pytest.approx(0.6)
    assert goal["informative_groups"] == pytest.approx(0.4)  # (0 + 4/5) / 2
    assert goal["within_state_variance"] == pytest.approx((0 + 0.2 * 0.8) / 2)
    assert goal["between_state_variance"] == pytest.approx(0.16)  # p = 1.0, 0.2
    bench.write_report(summary, tmp_path / "out.json")
    assert "| pinned | libero_goal:8 | 10 | 0.600 | 0.400 |" in (tmp_path / "out.md").read_text()
