"""benchmarks/pi0_full_size.py end to end: build from a config, save as a lerobot checkpoint, reload with
lerobot's own loader (same actions for the same noise), recipe on LIBERO with and without gradient
checkpointing (decision steps and one update step each). Tiny sizes: minutes; lerobot's real sizes:
about 17 GiB of RAM and tens of minutes on a CPU: not in the default run (`pytest -m real_size`), but it must pass when run."""

from __future__ import annotations

import math

import pytest


def _check(results: dict) -> None:
    assert results["reload"]["same_actions"], results["reload"]
    build = results["build"]
    assert 0 < build["params_trainable_trunk_frozen"] < build["params_total"]
    assert "torch.bfloat16" in build["dtypes"]
    for name in ("recipe", "recipe_checkpointing"):
        run = results[name]
        assert run["decision_steps"] >= 2 and run["optimizer_steps"] == 1, run
        assert math.isfinite(run["s_per_update_step"]) and run["update_peak_rss_gib"] > 0


@pytest.mark.slow
def test_tiny_pi0_through_the_real_size_path(import_benchmark, tmp_path) -> None:
    bench = import_benchmark("pi0_full_size")
    results = bench.main(["size=tiny", "max_steps=10", f"workdir={tmp_path}"])
    _check(results)
    assert results["build"]["params_total"] > 257152 * 64  # the real vocabulary, at tiny width


@pytest.mark.real_size
def test_real_size_pi0_on_cpu(import_benchmark, tmp_path) -> None:
    """lerobot's gemma_2b + gemma_300m: about 4.0 B parameters, from a config alone."""
    bench = import_benchmark("pi0_full_size")
    results = bench.main(["size=full", "max_steps=10", f"workdir={tmp_path}"])
    _check(results)
    assert results["build"]["params_total"] > 3.0e9
