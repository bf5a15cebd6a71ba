"""benchmarks/collection_throughput.py on real LIBERO workers and the shipped tiny PI0, at a tiny episode length."""

from __future__ import annotations

import pytest

TINY = ["env.max_steps=20", "algo.contexts_per_iteration=2", "algo.group_size=2", "algo.target_groups=2", "algo.max_context_draws=2"]


@pytest.mark.slow
def test_env_alone_against_the_trainers_collection(import_benchmark, capsys: pytest.CaptureFixture[str]) -> None:
    bench = import_benchmark("collection_throughput")
    out = bench.main(bench.ThroughputCheck(workers=[2], repeats=1, overrides=TINY))
    (result,) = out["results"]
    assert 0 < result["ratio"] <= 1.5 and out["ratio"] == result["ratio"]
    run = result["runs"]["a"][0]
    assert run["sim_steps"] >= 2 * 2 * 20  # every episode of the constant policy runs to env.max_steps
    assert run["policy_denoise"] == 0.0 and run["physics"] > 0 and run["render"] > 0
    share = result["collection_share"]
    assert sum(share.values()) == pytest.approx(1.0, abs=0.02) and share["policy_denoise"] > 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"collection/env {out['ratio']:.2f}"
