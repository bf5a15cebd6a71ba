"""The gymnasium LiberoGymEnv: registration, the official checker, chunk steps."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import ript.envs  # noqa: F401  (registers ript/LIBERO-v0)


@pytest.fixture(scope="module")
def gym_env():
    env = gymnasium.make("ript/LIBERO-v0", suite="libero_object", task=2, camera_size=32, action_chunk=4, max_steps=8)
    yield env
    env.close()


def test_passes_gymnasium_checker(gym_env):
    check_env(gym_env.unwrapped, skip_render_check=True)


def test_reset_options_and_chunk_step(gym_env):
    obs, info = gym_env.reset(seed=0, options={"init_state_id": 4})
    assert info["init_state_id"] == 4 and info["task"] == gym_env.unwrapped.instruction
    assert obs["agentview_image"].shape == (3, 32, 32) and obs["agentview_image"].dtype == np.uint8
    assert gym_env.observation_space.contains(obs)
    chunk = np.zeros((4, 7), np.float32)
    _, reward, terminated, truncated, info = gym_env.step(chunk)
    assert (reward, terminated, truncated, info["steps_executed"]) == (0.0, False, False, 4)
    _, _, _, truncated, info = gym_env.step(chunk)
    assert truncated and info["steps_executed"] == 4
    with pytest.raises(ValueError, match=r"expected \(4, 7\)"):
        gym_env.unwrapped.step(np.zeros(7))
