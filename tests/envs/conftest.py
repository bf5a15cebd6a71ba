"""Shared, expensive LIBERO envs for tests/envs (building one costs several seconds on CPU)."""

from __future__ import annotations

import pytest

import ript.envs  # noqa: F401  (sets MUJOCO_GL before mujoco loads)
from ript.envs.libero_env import LiberoEnv


@pytest.fixture(scope="session")
def object_env():
    """libero_object task 0, 5-action chunks, both cameras at 64 px, fixed seed."""
    env = LiberoEnv("libero_object", 0, action_chunk=5, camera_size=64, max_steps=40, seed=0)
    yield env
    env.close()
