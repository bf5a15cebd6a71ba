"""A context is a scene: pinned fixtures on suites that have fixtures, at the default camera size.

libero_object has no fixtures, so these tests use one task with fixtures from each of
libero_goal, libero_spatial, libero_10 and libero_90 (LIBERO moves their cabinets, stoves
and racks at every reset when left to itself).
"""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from ript.envs import LiberoEnv, keys, make_libero_env, push_contexts
from ript.envs.libero_env import scene_seed

OBS_KEYS = [keys.AGENTVIEW_IMAGE, keys.EYE_IN_HAND_IMAGE, keys.EEF_POS, keys.EEF_QUAT, keys.GRIPPER_QPOS]
FIXTURE_TASKS = [("libero_goal", 1), ("libero_spatial", 2), ("libero_10", 3), ("libero_90", 5)]


def _reset_to(env, init_state_id: int):
    env.clear_contexts()
    env.push_contexts([{keys.INIT_STATE_ID: init_state_id, keys.GROUP_ID: 0}])
    return env.reset()


def _fixture_pose(env: LiberoEnv) -> np.ndarray:
    """Positions and orientations of the task's fixtures in the MuJoCo model (not part of an init state)."""
    rs = env.sim.robosuite_env
    ids = [rs.sim.model.body_name2id(f.root_body) for f in rs.fixtures_dict.values()]
    assert ids, "this task must have fixtures"
    return np.concatenate([rs.sim.model.body_pos[ids].ravel(), rs.sim.model.body_quat[ids].ravel()])


def _scene(env, init_state_id: int, hard: bool = False) -> tuple[dict, np.ndarray, np.ndarray]:
    env.reset_mode = "hard" if hard else "soft"
    try:
        td = _reset_to(env, init_state_id)
    finally:
        env.reset_mode = "soft"
    return {k: td[k].clone() for k in OBS_KEYS}, _fixture_pose(env), env.sim.robosuite_env.sim.get_state().flatten()


def _assert_same(a, b) -> None:
    for k in OBS_KEYS:
        assert torch.equal(a[0][k], b[0][k]), f"{k}: {(a[0][k] != b[0][k]).float().mean().item():.1%} differ"
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[2], b[2])


@pytest.fixture(scope="module", params=FIXTURE_TASKS, ids=[f"{s}-{t}" for s, t in FIXTURE_TASKS])
def fixture_env(request):
    suite, task = request.param
    env = LiberoEnv(suite, task, seed=0)  # default camera size (256), pinned
    yield env
    env.close()


def test_pinned_resets_soft_and_hard_give_one_scene(fixture_env):
    first = _scene(fixture_env, 3)
    fixture_env.sim.step(np.tile([0.5, 0.0, -0.5, 0.0, 0.0, 0.0, 1.0], (5, 1)))  # move and close the gripper
    again = _scene(fixture_env, 3)
    hard = _scene(fixture_env, 3, hard=True)
    _assert_same(first, again)
    _assert_same(first, hard)
    # the scene follows the context: another init state places the fixtures elsewhere
    other = _scene(fixture_env, 4)
    assert not np.array_equal(first[1], other[1])


def test_upstream_keeps_libero_jitter(fixture_env):
    assert fixture_env.set_fixture_placement("upstream") == "pinned"
    try:
        a, b = _scene(fixture_env, 3), _scene(fixture_env, 3)
    finally:
        fixture_env.set_fixture_placement("pinned")
    assert not np.array_equal(a[1], b[1])
    differ = (a[0][keys.AGENTVIEW_IMAGE] != b[0][keys.AGENTVIEW_IMAGE]).any(0).float().mean().item()
    assert differ > 0.01, f"only {differ:.2%} of agentview pixels moved"
    torch.testing.assert_close(a[0][keys.EEF_POS], b[0][keys.EEF_POS])  # the robot starts where the init state puts it


@pytest.mark.parametrize("mode", ["pinned", "upstream"])
def test_caller_numpy_state_untouched(fixture_env, mode):
    fixture_env.set_fixture_placement(mode)
    try:
        np.random.seed(1234)
        expected = np.random.random(3)
        np.random.seed(1234)
        fixture_env.set_seed(7)
        td = _reset_to(fixture_env, 2)
        fixture_env.rand_step(td)
        np.testing.assert_array_equal(np.random.random(3), expected)
    finally:
        fixture_env.set_fixture_placement("pinned")


def test_scene_seed_hashes_the_whole_context():
    base = scene_seed(0, "libero_goal", 1, 3)
    assert base == scene_seed(0, "libero_goal", 1, 3)
    assert len({base, scene_seed(1, "libero_goal", 1, 3), scene_seed(0, "libero_10", 1, 3),
                scene_seed(0, "libero_goal", 2, 3), scene_seed(0, "libero_goal", 1, 4)}) == 5


@pytest.mark.slow
def test_parallel_workers_see_one_scene_per_context():
    """Workers get different env seeds (seed + i) yet the same context is the same scene, also as in this process."""
    env = make_libero_env("libero_goal", [1, 1], num_envs=2, seed=0)
    local = LiberoEnv("libero_goal", 1, scene_seed=0, seed=99)
    try:
        push_contexts(env, [{keys.INIT_STATE_ID: 5, keys.GROUP_ID: 1}], worker=0)
        push_contexts(env, [{keys.INIT_STATE_ID: 5, keys.GROUP_ID: 2}], worker=1)
        td = env.reset()
        mine = _reset_to(local, 5)
        for k in OBS_KEYS:
            assert torch.equal(td[k][0], td[k][1]), k
            assert torch.equal(td[k][0], mine[k]), k
    finally:
        env.close()
        local.close()


@pytest.mark.parametrize("suite, task", [("libero_goal", 1), ("libero_10", 3)])
def test_gymnasium_checker_passes_with_fixtures(suite, task):
    env = gymnasium.make("ript/LIBERO-v0", suite=suite, task=task)  # default settings: 256 px, both cameras
    try:
        check_env(env.unwrapped, skip_render_check=True)
        obs_a, _ = env.reset(seed=5, options={"init_state_id": 2})
        obs_b, _ = env.reset(seed=5, options={"init_state_id": 2, "hard_reset": True})
        for k in obs_a:
            np.testing.assert_array_equal(obs_a[k], obs_b[k], err_msg=k)
    finally:
        env.close()
