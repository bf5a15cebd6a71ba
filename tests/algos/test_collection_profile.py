"""CollectionProfile: the parts of a collection add up to its wall time, worker clocks are averaged, timers come off."""

from __future__ import annotations

import time

import pytest
import torch
from tensordict.nn import TensorDictModule
from torchrl.collectors import Collector
from torchrl.envs import SerialEnv, StepCounter, TransformedEnv
from torchrl.envs.custom import PendulumEnv

from ript.algos.collection_profile import PARTS, CollectionProfile


class ClockedPendulum(PendulumEnv):
    """A worker that reports fixed clocks, as LiberoEnv reports its physics and rendering."""

    def __init__(self, physics: float) -> None:
        super().__init__()
        self.physics = physics

    def collection_seconds(self, clear: bool = True) -> dict[str, float]:
        return {"physics": self.physics, "render": 0.01, "worker_other": 0.0, "sim_steps": 7.0}


class SlowPolicy(torch.nn.Module):
    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        time.sleep(0.002)
        return torch.zeros(*obs.shape, 1)


def _setup(physics: tuple[float, float] = (0.02, 0.04)) -> tuple[TransformedEnv, TensorDictModule, Collector]:
    env = TransformedEnv(SerialEnv(2, [lambda p=p: ClockedPendulum(p) for p in physics]), StepCounter(max_steps=5))
    env.set_seed(0)
    policy = TensorDictModule(SlowPolicy(), in_keys=["th"], out_keys=["action"])
    return env, policy, Collector(env, policy, frames_per_batch=20, total_frames=-1, auto_register_policy_transforms=False)


def test_parts_sum_to_the_wall_time_and_worker_clocks_are_averaged() -> None:
    env, policy, collector = _setup()
    batches = iter(collector)
    with CollectionProfile(env, policy, worker_clocks=True) as profile:
        start = time.perf_counter()
        for _ in range(3):
            next(batches)
        wall = time.perf_counter() - start
    parts = profile.breakdown(wall)
    assert set(parts) == {*PARTS, "sim_steps"}
    assert sum(parts[p] for p in PARTS) == pytest.approx(wall, rel=1e-6)
    assert parts["physics"] == pytest.approx(0.03) and parts["render"] == pytest.approx(0.01)  # the mean of two workers
    assert parts["sim_steps"] == 14.0  # summed over workers
    assert parts["policy_other"] >= 30 * 0.002 * 0.9  # 30 policy calls (2 workers, 60 frames) of 2 ms (no phase_seconds: all "other")
    assert parts["transforms"] > 0 and parts["policy_denoise"] == 0.0
    collector.shutdown()


def test_timers_come_off_and_the_env_still_runs() -> None:
    env, policy, collector = _setup()
    base = env.base_env
    with CollectionProfile(env, policy, worker_clocks=False) as profile:
        next(iter(collector))
    assert "forward" not in vars(policy) and "_step" not in vars(base) and "_reset" not in vars(base)
    assert "inv" not in vars(env.transform)
    assert profile.workers == [] and profile.breakdown(1.0)["sim_steps"] == 0
    before = dict(profile.seconds)
    next(iter(collector))  # no longer timed
    assert profile.seconds == before
    collector.shutdown()
