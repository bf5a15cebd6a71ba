"""LIBERO as a gymnasium Env, on the same `LiberoSimulator` core as the TorchRL `LiberoEnv`.

    import gymnasium, ript.envs
    env = gymnasium.make("ript/LIBERO-v0", suite="libero_object", task=0, camera_size=128)
    obs, info = env.reset(seed=0, options={"init_state_id": 3})

Observations are a Dict of the raw entries (uint8 CHW images in simulator
orientation, float32 eef_pos/eef_quat/gripper_qpos); reward = float(success);
terminated = success, truncated = `max_steps` simulator steps ran. With
`action_chunk=n` an action is a chunk [n, 7] (stops early at success).
`fixture_placement="pinned"` (default) makes the scene a function of (last reset
seed, task, init state); "upstream" keeps LIBERO's per-reset fixture jitter.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from ript.envs.libero_env import ACTION_DIM, CAMERAS, LiberoSimulator, _validate_actions

ENV_ID = "ript/LIBERO-v0"


class LiberoGymEnv(gym.Env):
    """One LIBERO task; init state from `options={"init_state_id": i}` or drawn with the reset seed."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        suite: str = "libero_object",
        task: int | str = 0,
        *,
        action_chunk: int | None = None,
        camera_size: int | tuple[int, int] = 256,
        wrist_camera: bool = True,
        max_steps: int | None = None,
        settle_steps: int = 10,
        hard_reset: bool = False,
        fixture_placement: str = "pinned",
        render_mode: str | None = None,
    ) -> None:
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.sim = LiberoSimulator(
            suite, task, camera_size=camera_size, wrist_camera=wrist_camera, max_steps=max_steps, settle_steps=settle_steps,
            fixture_placement=fixture_placement,
        )
        self.render_mode = render_mode
        self.hard_reset = hard_reset
        self.instruction = self.sim.instruction
        self._action_shape = (ACTION_DIM,) if action_chunk is None else (int(action_chunk), ACTION_DIM)
        h, w = self.sim.camera_hw
        obs = {CAMERAS[c][0]: spaces.Box(0, 255, (3, h, w), np.uint8) for c in self.sim.cameras}
        for name, n in (("robot0_eef_pos", 3), ("robot0_eef_quat", 4), ("robot0_gripper_qpos", 2)):
            obs[name] = spaces.Box(-np.inf, np.inf, (n,), np.float32)
        self.observation_space = spaces.Dict(obs)
        self.action_space = spaces.Box(-1.0, 1.0, self._action_shape, np.float32)
        self._init_state_id = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Gymnasium's reset; options.init_state_id picks the shipped state, else the seeded RNG does."""
        super().reset(seed=seed)
        if seed is not None:  # the scene seed (pinned) and the jitter's generator (upstream)
            self.sim.seed = int(seed)
            self.sim.seed_jitter(seed)
        options = options or {}
        if "init_state_id" in options:
            self._init_state_id = int(options["init_state_id"])
        else:
            self._init_state_id = int(self.np_random.integers(self.sim.n_init_states))
        obs = self.sim.reset(self._init_state_id, hard=bool(options.get("hard_reset", self.hard_reset)))
        return obs, self._info(False, 0)

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """One action, or one chunk when built with action_chunk; reward 1.0 on success, which terminates."""
        actions = _validate_actions(np.asarray(action, dtype=np.float64), self._action_shape)
        obs, success, executed, truncated = self.sim.step(actions)
        return obs, float(success), bool(success), bool(truncated), self._info(success, executed)

    def _info(self, success: bool, executed: int) -> dict[str, Any]:
        return {"success": bool(success), "steps_executed": executed, "task": self.instruction,
                "task_id": self.sim.task_id, "init_state_id": self._init_state_id}

    def render(self) -> np.ndarray | None:
        """The agentview camera, upright (HWC uint8), rendered at the current state."""
        if self.render_mode is None:
            return None
        h, w = self.sim.camera_hw
        self.sim._make_current()
        img = self.sim.robosuite_env.sim.render(camera_name="agentview", width=w, height=h)
        return np.ascontiguousarray(img[::-1, ::-1])

    def close(self) -> None:
        """Frees the simulator and its GL context (gymnasium's contract)."""
        self.sim.close()


if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point="ript.envs.gym_env:LiberoGymEnv")
