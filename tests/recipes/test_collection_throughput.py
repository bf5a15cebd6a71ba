"""benchmarks/collection_throughput.py on real LIBERO workers and the shipped tiny PI0, at a tiny episode length."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tensordict import TensorDictBase

from ript.algos.group_collection import GroupCollector
from ript.recipes.training.config import load_config
from ript.recipes.training.distributed import distributed_session
from ript.recipes.training.trainer import GROUP_BASE, Trainer

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
    assert all(ms > 0 for per in result["worker_ms_per_sim_step"].values() for ms in per.values())
    share = result["collection_share"]
    assert sum(share.values()) == pytest.approx(1.0, abs=0.02) and share["policy_denoise"] > 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"collection/env {out['ratio']:.2f}"


def collected_steps(overrides: list[str], out: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, torch.Tensor]:
    """One `Trainer.collect` of the main job on 2 LIBERO workers: every step of our groups, per worker in time order."""
    batches: list[TensorDictBase] = []
    real = GroupCollector.collect

    def spy(self, groups, repeats, *, on_batch=None, on_episode=None):
        def seen(batch: TensorDictBase) -> None:
            batches.append(batch.select("group_id", "action", ("next", "reward")).clone())
            if on_batch is not None:
                on_batch(batch)

        return real(self, groups, repeats, on_batch=seen, on_episode=on_episode)

    monkeypatch.setattr(GroupCollector, "collect", spy)
    cfg = load_config("quick_test", ["env.num_envs=2", "logging.progress=false", *TINY, *overrides])
    with distributed_session(cfg.train.device, None, cfg.distributed.timeout_s) as dist:
        trainer = Trainer(cfg, out, dist)
        try:
            trainer.collect(0)
        finally:
            trainer.close()
    steps = torch.cat(batches, dim=1)  # [workers, time]
    ours = steps.get("group_id").reshape(steps.shape) >= GROUP_BASE
    return {w: steps[w][ours[w]] for w in range(steps.shape[0])}


@pytest.mark.slow
def test_speed_settings_leave_the_collected_actions_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Collector batch size and torch threads only schedule the collection: same seed, same steps, bit for bit."""
    small = collected_steps(["env.batch_decisions=2", "train.collect_threads=1"], tmp_path / "small", monkeypatch)
    whole = collected_steps(["env.batch_decisions=null", "train.collect_threads=2"], tmp_path / "whole", monkeypatch)
    for w in (0, 1):
        assert small[w].numel() >= 2 * 20 // 5  # at least one episode of 4 decisions on each worker
        assert small[w].shape == whole[w].shape
        assert torch.equal(small[w].get("group_id"), whole[w].get("group_id"))
        assert torch.equal(small[w].get("action"), whole[w].get("action"))
        assert torch.equal(small[w].get(("next", "reward")), whole[w].get(("next", "reward")))
