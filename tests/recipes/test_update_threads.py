"""benchmarks/update_threads.py: the trainer's own update timed at each thread count (toy env, MLP policy)."""

from __future__ import annotations

import pytest

from ript.recipes.training.config import ConfigError

TOY = ["env.kind=toy", "policy.kind=mlp", "policy.path=null"]


def test_update_is_timed_at_each_count_and_the_fastest_named(import_benchmark, capsys: pytest.CaptureFixture[str]) -> None:
    bench = import_benchmark("update_threads")
    out = bench.main(bench.UpdateThreadsCheck(threads=[1, 2], repeats=2, overrides=TOY))
    assert {n: len(s) for n, s in out["seconds"].items()} == {1: 2, 2: 2}  # the warm-up round is not counted
    assert all(t > 0 for s in out["seconds"].values() for t in s)
    assert out["best"] == min(out["median"], key=out["median"].get)
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"update threads {out['best']}"


@pytest.mark.parametrize("check", [dict(threads=[]), dict(threads=[0, 1]), dict(threads=[2, 2]), dict(repeats=0),
                                   dict(overrides=["optim.lr=-1"])])
def test_bad_settings_are_config_errors(import_benchmark, check: dict) -> None:
    bench = import_benchmark("update_threads")
    with pytest.raises(ConfigError):
        bench.validate(bench.UpdateThreadsCheck(**check))
