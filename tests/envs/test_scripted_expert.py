"""The privileged scripted expert solves libero_object task 1 at the policy's chunk cadence."""

from __future__ import annotations

import numpy as np
import pytest

import ript.envs  # noqa: F401  (sets MUJOCO_GL before mujoco loads)
from ript.envs.libero_env import SUITE_MAX_STEPS, LiberoSimulator
from ript.envs.scripted_expert import DONE, PickPlaceExpert, make_expert


@pytest.fixture(scope="module")
def task1_sim():
    sim = LiberoSimulator("libero_object", 1, camera_size=32, wrist_camera=False)
    yield sim
    sim.close()


def test_expert_solves_task1_within_budget(task1_sim):
    sim = task1_sim
    sim.reset(0)
    expert = PickPlaceExpert(sim.robosuite_env)
    assert expert.object_name == "cream_cheese_1" and expert.container_name == "basket_1"
    success = False
    while not success and sim.elapsed < SUITE_MAX_STEPS["libero_object"]:
        chunk = expert.act(5)
        assert chunk.shape == (5, 7) and np.all(np.abs(chunk) <= 1.0)
        _, success, _, truncated = sim.step(chunk)
        assert not truncated or success
    assert success, f"expert failed (phase {expert.phase_name}, {sim.elapsed} steps)"
    assert sim.elapsed < 200  # about 110-120 steps measured
    assert expert.phase <= DONE


def test_unknown_object_is_a_clear_error(task1_sim):
    with pytest.raises(ValueError, match="unknown object 'teapot'"):
        PickPlaceExpert(task1_sim.robosuite_env, object_name="teapot", container_name="basket_1")


def test_expert_pinches_a_bowl_rim_and_sets_it_on_the_plate():
    """libero_goal task 8 ("put the bowl on the plate"): the bowl is wider than the open gripper."""
    sim = LiberoSimulator("libero_goal", 8, camera_size=32, wrist_camera=False)
    try:
        sim.reset(3)
        expert = make_expert(sim.robosuite_env)
        assert expert.rim_pinch and expert.object_name.startswith("akita_black_bowl")
        assert expert.table_z > 0.8  # a table scene: heights are measured from its top
        success = False
        while not success and sim.elapsed < SUITE_MAX_STEPS["libero_goal"]:
            _, success, _, _ = sim.step(expert.act(5))
        assert success, f"expert failed (phase {expert.phase_name}, {sim.elapsed} steps)"
        assert sim.elapsed < 180 and expert.retries == 0
    finally:
        sim.close()
