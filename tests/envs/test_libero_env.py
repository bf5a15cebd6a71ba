"""LiberoEnv on real LIBERO: resets, chunks, success, groups, contexts, lazy cameras, workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchrl.envs.utils import check_env_specs

from ript.envs import LiberoEnv, keys, make_libero_env, push_contexts
from ript.envs.libero_env import SETTLE_ACTION, SUITE_MAX_STEPS, SUITES, LiberoSimulator, get_suite, load_init_states, resolve_task_id

OBS_KEYS = [keys.AGENTVIEW_IMAGE, keys.EYE_IN_HAND_IMAGE, keys.EEF_POS, keys.EEF_QUAT, keys.GRIPPER_QPOS]


def _reset_to(env, init_state_id: int, group_id: int = 0):
    env.clear_contexts()
    env.push_contexts([{keys.INIT_STATE_ID: init_state_id, keys.GROUP_ID: group_id}])
    return env.reset()


def _assert_same_obs(a, b):
    for k in OBS_KEYS:
        assert torch.equal(a[k], b[k]), f"{k}: max diff {(a[k].double() - b[k].double()).abs().max().item()}"



@pytest.mark.parametrize("suite", SUITES)
def test_every_suite_resolves_tasks_and_init_states(suite):
    s = get_suite(suite)
    assert s.n_tasks == (90 if suite == "libero_90" else 10)
    last = s.n_tasks - 1
    assert resolve_task_id(s, s.get_task(last).name) == last
    assert resolve_task_id(s, s.get_task(last).language) == last
    states = load_init_states(s, last)
    assert states.ndim == 2 and len(states) >= 50
    # openpi's evaluation protocol, written out here independently of the code's table
    assert SUITE_MAX_STEPS[suite] == {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}[suite]


def test_unset_max_steps_takes_the_suites_episode_length():
    sim = LiberoSimulator("libero_spatial", 0, camera_size=32, wrist_camera=False)
    try:
        assert sim.max_steps == 220
    finally:
        sim.close()


def test_reset_observation_schema(object_env):
    td = _reset_to(object_env, 3, group_id=11)
    h = w = 64
    assert td[keys.AGENTVIEW_IMAGE].shape == (3, h, w) and td[keys.AGENTVIEW_IMAGE].dtype == torch.uint8
    assert td[keys.EYE_IN_HAND_IMAGE].shape == (3, h, w)
    assert td[keys.EEF_POS].shape == (3,) and td[keys.EEF_QUAT].shape == (4,) and td[keys.GRIPPER_QPOS].shape == (2,)
    assert td[keys.EEF_POS].dtype == torch.float32
    assert torch.allclose(td[keys.EEF_QUAT].norm(), torch.tensor(1.0), atol=1e-4)
    assert td[keys.TASK] == "pick up the alphabet soup and place it in the basket"
    assert (td[keys.TASK_ID].item(), td[keys.INIT_STATE_ID].item(), td[keys.GROUP_ID].item()) == (0, 3, 11)
    assert td[keys.TASK_ID].dtype == torch.int64 and td[keys.TASK_ID].shape == ()
    assert not td["done"].any() and not td[keys.SUCCESS].any()
    assert object_env.sim.elapsed == 0
    check_env_specs(object_env)


def test_same_seed_same_first_observation_and_different_init_states_differ(object_env):
    object_env.clear_contexts()
    firsts = []
    for _ in range(2):
        object_env.set_seed(123)
        object_env._episodes = 0  # restart the group counter as a fresh env would
        firsts.append(object_env.reset())
    assert firsts[0][keys.INIT_STATE_ID] == firsts[1][keys.INIT_STATE_ID]
    _assert_same_obs(*firsts)
    other = _reset_to(object_env, (int(firsts[0][keys.INIT_STATE_ID]) + 1) % 50)
    assert not torch.equal(other[keys.AGENTVIEW_IMAGE], firsts[0][keys.AGENTVIEW_IMAGE])


def test_soft_reset_equals_hard_reset(object_env):
    soft = _reset_to(object_env, 4)
    object_env.sim.step(np.tile([0.5, 0.0, -0.5, 0.0, 0.0, 0.0, 1.0], (5, 1)))  # dirty the gripper state
    soft_again = _reset_to(object_env, 4)
    object_env.reset_mode = "hard"
    try:
        hard = _reset_to(object_env, 4)
    finally:
        object_env.reset_mode = "soft"
    _assert_same_obs(soft, soft_again)
    _assert_same_obs(soft, hard)


def test_chunk_step_and_truncation(object_env):
    td = _reset_to(object_env, 0)
    td["action"] = torch.zeros(5, 7)
    td["action"][:, -1] = -1.0
    out = object_env.step(td)["next"]
    assert out[keys.STEPS_EXECUTED].item() == 5 and object_env.sim.elapsed == 5
    assert out["reward"].item() == 0.0 and not out["done"].item()
    object_env.sim.max_steps = 7
    try:
        out = object_env.step(out.set("action", td["action"]))["next"]
    finally:
        object_env.sim.max_steps = 40
    assert out[keys.STEPS_EXECUTED].item() == 2  # stopped at the step budget
    assert out["truncated"].item() and out["done"].item() and not out["terminated"].item()


def test_chunk_stops_at_success(object_env, monkeypatch):
    td = _reset_to(object_env, 0)
    calls = []

    def fake_success():
        calls.append(1)
        return len(calls) == 3

    monkeypatch.setattr(object_env.sim, "_check_success", fake_success)
    td["action"] = torch.zeros(5, 7)
    out = object_env.step(td)["next"]
    assert out[keys.STEPS_EXECUTED].item() == 3 and len(calls) == 3
    assert out[keys.SUCCESS].item() and out["terminated"].item() and out["done"].item()
    assert out["reward"].item() == 1.0 and not out["truncated"].item()


def test_success_is_read_from_libero(object_env):
    """Put the soup in the basket (the BDDL goal) and let LIBERO's predicate report it."""
    td = _reset_to(object_env, 0)
    rs = object_env.sim.robosuite_env
    basket = rs.sim.data.body_xpos[rs.obj_body_id["basket_1"]].copy()
    joint = rs.objects_dict["alphabet_soup_1"].joints[-1]
    q = rs.sim.data.get_joint_qpos(joint).copy()
    q[:3] = basket + np.array([0.0, 0.0, 0.05])
    rs.sim.data.set_joint_qpos(joint, q)
    rs.sim.forward()
    td["action"] = torch.as_tensor(np.tile(SETTLE_ACTION, (5, 1)), dtype=torch.float32)
    out = object_env.step(td)["next"]
    assert out[keys.SUCCESS].item() and out["terminated"].item() and out["reward"].item() == 1.0
    assert out[keys.STEPS_EXECUTED].item() == 1


def test_lazy_images_equal_per_step_rendering(object_env):
    """Decision-step images (cameras on for the last sim step only) equal LIBERO's per-step ones."""
    actions = torch.as_tensor(np.random.default_rng(0).uniform(-1, 1, (3, 5, 7)), dtype=torch.float32)
    runs = {}
    try:
        for lazy in (False, True):
            object_env.sim.lazy_render = lazy
            td = _reset_to(object_env, 2)
            frames = [td.select(*OBS_KEYS).clone()]
            for a in actions:
                td = object_env.step(td.set("action", a))["next"]
                frames.append(td.select(*OBS_KEYS).clone())
            runs[lazy] = frames
    finally:
        object_env.sim.lazy_render = True
    for eager, lazy in zip(runs[False], runs[True]):
        _assert_same_obs(eager, lazy)
    assert not torch.equal(runs[True][0][keys.AGENTVIEW_IMAGE], runs[True][-1][keys.AGENTVIEW_IMAGE])  # the arm moved


def test_contexts_queue_then_mode(object_env):
    object_env.clear_contexts()
    assert push_contexts(object_env, [{keys.INIT_STATE_ID: 5, keys.GROUP_ID: 70}, {keys.INIT_STATE_ID: 6}]) == [2]
    a, b = object_env.reset(), object_env.reset()
    assert (a[keys.INIT_STATE_ID].item(), a[keys.GROUP_ID].item()) == (5, 70)
    assert (b[keys.INIT_STATE_ID].item(), b[keys.GROUP_ID].item()) == (6, -1)
    assert object_env.pending_contexts() == 0
    assert object_env.push_contexts([{keys.INIT_STATE_ID: 1}], worker=3) == 0  # addressed to another worker
    with pytest.raises(ValueError, match=r"use 0\.\.49"):
        push_contexts(object_env, [{keys.INIT_STATE_ID: 50}])
    with pytest.raises(ValueError, match="init_state_id"):
        object_env.push_contexts([{"init": 1}])


def test_group_repeats_and_cycle(object_env):
    before = _reset_to(object_env, 0)
    env = LiberoEnv("libero_object", 1, camera_size=32, wrist_camera=False, group_repeats=2,
                    init_state_mode="cycle", init_state_id=48, group_id_offset=100)
    try:
        tds = [env.reset() for _ in range(5)]
        assert [t[keys.INIT_STATE_ID].item() for t in tds] == [48, 48, 49, 49, 0]
        assert [t[keys.GROUP_ID].item() for t in tds] == [100, 100, 101, 101, 102]
        assert keys.EYE_IN_HAND_IMAGE not in env.observation_spec.keys(True)
        assert tds[0][keys.AGENTVIEW_IMAGE].shape == (3, 32, 32)
        assert torch.equal(tds[0][keys.AGENTVIEW_IMAGE], tds[1][keys.AGENTVIEW_IMAGE])
        env.group_repeats, env.init_state_mode, env._episodes = 3, "random", 0
        env.set_seed(7)
        ids = [env.reset()[keys.INIT_STATE_ID].item() for _ in range(6)]
        assert ids[0] == ids[1] == ids[2] and ids[3] == ids[4] == ids[5]
        td = env.reset()
        td["action"] = torch.zeros(7)  # action_chunk=None: one action [7]
        assert env.step(td)["next", keys.STEPS_EXECUTED].item() == 1
        # two simulators in one process: each renders in its own GL context
        _assert_same_obs(before, _reset_to(object_env, 0))
    finally:
        env.close()
    _assert_same_obs(before, _reset_to(object_env, 0))


def test_bad_inputs(object_env):
    with pytest.raises(ValueError, match="libero_spatial"):
        LiberoEnv("libero_nope", 0)
    with pytest.raises(ValueError, match=r"use 0\.\.9"):
        LiberoEnv("libero_goal", 10)
    with pytest.raises(ValueError, match="unknown task 'no such task'.*open_the_middle_drawer"):
        LiberoEnv("libero_goal", "no such task")
    td = _reset_to(object_env, 0)
    with pytest.raises(ValueError, match=r"expected \(5, 7\)"):
        object_env.step(td.set("action", torch.zeros(7)))
    bad = torch.zeros(5, 7)
    bad[2, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        object_env.step(td.set("action", bad))
    with pytest.raises(ValueError, match="num_envs"):
        make_libero_env("libero_object", task=[0, 1, 2], num_envs=2)


def test_actions_are_clipped(object_env):
    """A chunk of +-5 moves the arm exactly as the same chunk clipped to +-1."""
    big = torch.tensor([[5.0, -5.0, 5.0, 0.0, 0.0, 0.0, 5.0]] * 5)
    ends = []
    for a in (big, big.clamp(-1, 1)):
        td = _reset_to(object_env, 1)
        ends.append(object_env.step(td.set("action", a))["next"])
    _assert_same_obs(*ends)


@pytest.mark.slow
def test_two_workers_with_collector_and_contexts():
    """ParallelEnv of two tasks: specs, per-worker contexts consumed by a Collector's own resets."""
    from torchrl.collectors import Collector
    from torchrl.envs import StepCounter

    env = make_libero_env("libero_object", task=[0, 1], num_envs=2, action_chunk=4, camera_size=32,
                          wrist_camera=False, max_steps=12, seed=0, transforms=[StepCounter()])
    try:
        check_env_specs(env)
        assert push_contexts(env, [{keys.INIT_STATE_ID: 7, keys.GROUP_ID: 42}], worker=0) == [1, 0]
        assert push_contexts(env, [{keys.INIT_STATE_ID: 9, keys.GROUP_ID: 43}], worker=1) == [1, 1]
        with pytest.raises(ValueError, match=r"use 0\.\.49"):
            push_contexts(env, [{keys.INIT_STATE_ID: 99}], worker=1)

        def policy(td):
            return td.set("action", torch.zeros(*td.batch_size, 4, 7))

        collector = Collector(env, policy, frames_per_batch=8, total_frames=8)
        batch = next(iter(collector))
        assert batch["task_id"][:, 0].tolist() == [0, 1]
        assert batch["init_state_id"][:, 0].tolist() == [7, 9]
        assert batch["group_id"][:, 0].tolist() == [42, 43]
        assert batch["next", keys.STEPS_EXECUTED].eq(4).all()
        assert batch["next", "done"][:, 2].all()  # 12 sim steps = 3 chunks
        assert batch["group_id"][0, 3].item() // 1_000_000 == 0 and batch["group_id"][1, 3].item() // 1_000_000 == 1
        assert batch["task"][0][0] != batch["task"][1][0]
        collector.shutdown()
    finally:
        if not env.is_closed:
            env.close()


def test_render_threads_is_checked_before_any_simulator() -> None:
    with pytest.raises(ValueError, match="render_threads must be None"):
        LiberoEnv("libero_object", 0, render_threads=0)
