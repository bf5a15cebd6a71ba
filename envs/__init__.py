"""LIBERO as TorchRL/gymnasium environments with PI0-consistent transforms.

Importing sets headless rendering defaults (EGL through Mesa) before mujoco loads;
export MUJOCO_GL=osmesa to use OSMesa instead.
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"] if os.environ["MUJOCO_GL"] in ("egl", "osmesa") else "egl")

from .normalization import NormStats  # noqa: E402
from .transforms import (  # noqa: E402
    PI0ActionTransform,
    PI0ImageTransform,
    PI0StateTransform,
    PI0TokenizeTransform,
    make_pi0_transforms,
)
from ript.envs.factory import make_libero_env, push_contexts  # noqa: E402
from ript.envs.gym_env import LiberoGymEnv  # noqa: E402  (registers "ript/LIBERO-v0" with gymnasium)
from ript.envs.libero_env import SUITE_MAX_STEPS, SUITES, LiberoEnv, LiberoSimulator  # noqa: E402
