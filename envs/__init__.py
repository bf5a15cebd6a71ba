"""LIBERO as TorchRL/gymnasium environments with PI0-consistent transforms.

Importing sets headless rendering defaults (EGL through Mesa) before mujoco loads;
export MUJOCO_GL=osmesa to use OSMesa instead.
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"] if os.environ["MUJOCO_GL"] in ("egl", "osmesa") else "egl")
