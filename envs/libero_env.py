"""LIBERO as a TorchRL environment: action chunks, lazy cameras, soft resets, RIPT contexts.

What this builds on, and why not more:
- LIBERO's own `OffScreenRenderEnv` (hf-libero, robosuite 1.4) runs the simulation,
  the BDDL success predicates and the cameras; its benchmark registry gives the
  suites, tasks and the shipped initial states.
- torchrl 0.14's `torchrl.envs.libs.libero.LiberoWrapper/LiberoEnv` was read and is
  not subclassed: it renders both cameras on every simulator step (about 100 ms per
  camera on CPU), steps one action at a time, rebuilds through LIBERO's hard reset,
  flips the images and packs a 9-dim state, while RIPT needs chunks with cameras
  rendered only at decision steps, soft resets, raw eef pos/quat and gripper qpos,
  and contexts chosen by the trainer. Its init-state file loader (torch.load with
  weights_only=False, needed on torch >= 2.6) is reused, and its ParallelEnv
  construction (`metadata_from_workers=True`, no throw-away env in the parent) is
  followed in `ript.envs.factory`.
- lerobot's gymnasium `LiberoEnv` renders every step too; its per-suite horizons
  differ from openpi's (libero_spatial 280 there, 220 here).

`LiberoSimulator` is the numpy core shared by `LiberoEnv` (TorchRL) and
`ript.envs.gym_env.LiberoGymEnv` (gymnasium).

Lazy rendering, exactly equal to per-step rendering: robosuite samples its
observables (cameras and proprioception alike) at an early sub-step of each
control step, not at its end, so rendering the final simulator state would give a
different image than LIBERO returns. The camera observables are therefore kept
disabled and switched on only for the last simulator step of a decision step,
with their sampling clocks copied from a proprioceptive observable, so robosuite
renders them at the very sub-step that per-step rendering would have used.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import io
import os
import time
import zlib
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data.tensor_specs import Bounded, Categorical, Composite, NonTensor, Unbounded
from torchrl.envs import EnvBase

from ript.envs import keys

if TYPE_CHECKING:  # LIBERO's modules import the simulator: for hints only
    from libero.libero.benchmark import Benchmark
    from libero.libero.envs.bddl_base_domain import BDDLBaseDomain

SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
# openpi's LIBERO evaluation horizons: policy-driven simulator steps after settling.
SUITE_MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}
SETTLE_ACTION = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0])
ACTION_DIM = 7
# robosuite camera name -> (observable name, key in the TensorDict)
CAMERAS = {
    "agentview": ("agentview_image", keys.AGENTVIEW_IMAGE),
    "robot0_eye_in_hand": ("robot0_eye_in_hand_image", keys.EYE_IN_HAND_IMAGE),
}
PROPRIO = {"robot0_eef_pos": keys.EEF_POS, "robot0_eef_quat": keys.EEF_QUAT, "robot0_gripper_qpos": keys.GRIPPER_QPOS}
_SYNC_REFERENCE = "robot0_eef_pos"  # an always-enabled observable whose sampling clock the cameras copy
# "pinned": a context (seed, suite, task, init state) fixes the whole scene, fixtures included;
# "upstream": LIBERO's own per-reset fixture jitter (the published evaluation protocol).
FIXTURE_PLACEMENTS = ("pinned", "upstream")


def _libero_benchmark():
    """LIBERO's benchmark registry (no simulator import) after making its config and assets ready."""
    from ript.envs.install_assets import ensure_libero_ready

    try:
        ensure_libero_ready()
    except RuntimeError as err:
        raise RuntimeError(f"{err} (or: python -m ript.envs.install_assets)") from err
    from libero.libero import benchmark

    return benchmark


def _import_libero():
    """The registry, LIBERO's paths and its simulator env class; names the set-up step on failure."""
    benchmark = _libero_benchmark()
    from libero.libero import get_libero_path
    from libero.libero.envs import OffScreenRenderEnv

    return benchmark, get_libero_path, OffScreenRenderEnv


def get_suite(suite: str) -> Benchmark:
    """The LIBERO benchmark object for `suite`; unknown names list the valid ones."""
    if suite not in SUITES:
        raise ValueError(f"unknown LIBERO suite {suite!r}: use one of {list(SUITES)}")
    return _libero_benchmark().get_benchmark_dict()[suite]()


@functools.lru_cache(maxsize=None)
def suite_sizes(suite: str) -> tuple[int, ...]:
    """How many init states each task of `suite` ships (its length is the task count).

    Read from LIBERO's benchmark registry and init-state files without importing the
    simulator (robosuite) or building one, so configs can be checked before any work.
    """
    with contextlib.redirect_stdout(io.StringIO()):  # LIBERO prints its task order: keep a config error to one line
        suite_obj = get_suite(suite)
    return tuple(len(suite_obj.get_task_init_states(i)) for i in range(suite_obj.n_tasks))


def resolve_task_id(suite_obj: Benchmark, task: int | str) -> int:
    """Task index from an index, a task name (bddl stem) or its language instruction."""
    n = suite_obj.n_tasks
    if isinstance(task, (int, np.integer)) and not isinstance(task, bool):
        if not 0 <= int(task) < n:
            raise ValueError(f"task id {task} out of range for {suite_obj.name}: use 0..{n - 1}")
        return int(task)
    if isinstance(task, str):
        for i in range(n):
            t = suite_obj.get_task(i)
            if task in (t.name, t.language):
                return i
        names = [suite_obj.get_task(i).name for i in range(n)]
        raise ValueError(f"unknown task {task!r} in {suite_obj.name}: use an id 0..{n - 1} or one of {names}")
    raise TypeError(f"task must be an int id or a str name, got {type(task).__name__}")


def load_init_states(suite_obj: Benchmark, task_id: int) -> np.ndarray:
    """The task's shipped initial simulator states [N, D] (through torchrl's trusted-file loader)."""
    from torchrl.envs.libs.libero import LiberoEnv as _TorchRLLibero

    return np.asarray(_TorchRLLibero._load_init_states(suite_obj, suite_obj.get_task(task_id)))


def scene_seed(seed: int, suite: str, task_id: int, init_state_id: int | None) -> int:
    """The numpy seed of one pinned scene: a hash of the whole context, equal in every process.

    init_state_id=None gives the seed of the task's (re)builds, which draw from numpy too.
    """
    entropy = [int(seed) % 2**64, zlib.crc32(suite.encode()), int(task_id)]
    if init_state_id is not None:
        entropy.append(int(init_state_id))
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def check_fixture_placement(mode: str) -> str:
    """`mode`, checked before any simulator is built, so a typo fails with the valid choices."""
    if mode not in FIXTURE_PLACEMENTS:
        raise ValueError(f"fixture_placement must be one of {list(FIXTURE_PLACEMENTS)}, got {mode!r}")
    return mode


class LiberoSimulator:
    """One LIBERO task in one MuJoCo simulation, driven by action chunks (plain numpy).

    Shared by the TorchRL and gymnasium envs. `reset` restores an init state
    (soft by default: no model/renderer rebuild) and runs the settle steps; `step`
    runs a chunk [n, 7] until success or the step budget, rendering cameras once.

    Fixtures (cabinets, stoves, racks) are not part of an init state: LIBERO places
    them at every reset by writing `model.body_pos` from numpy's global generator.
    With `fixture_placement="pinned"` every draw of a reset comes from a generator
    seeded by (seed, suite, task, init state), so a context is one scene in every
    worker and process, soft or hard reset alike; "upstream" keeps LIBERO's jitter,
    drawn from this simulator's own generator (see `seed_jitter`).
    Either way the caller's numpy global state is left as it was.
    """

    def __init__(
        self,
        suite: str,
        task: int | str,
        *,
        camera_size: int | tuple[int, int] = 256,
        wrist_camera: bool = True,
        max_steps: int | None = None,
        settle_steps: int = 10,
        lazy_render: bool = True,
        render_gpu_device_id: int = -1,
        render_threads: int | None = None,
        fixture_placement: Literal["pinned", "upstream"] = "pinned",
        seed: int = 0,
    ) -> None:
        if render_threads is not None:  # Mesa's llvmpipe reads it when the process's first GL context is made
            if render_threads < 1:
                raise ValueError(f"render_threads must be None (Mesa's default) or >= 1, got {render_threads}")
            os.environ["LP_NUM_THREADS"] = str(int(render_threads))
        self.fixture_placement = check_fixture_placement(fixture_placement)
        self.seed = int(seed)  # pinned scenes' seed
        self.seed_jitter(self.seed)
        self._placement_seed: int | None = None  # the current reset's, while it runs (pinned)
        self.suite_name = suite
        self.suite = get_suite(suite)
        self.task_id = resolve_task_id(self.suite, task)
        h, w = (camera_size, camera_size) if isinstance(camera_size, int) else tuple(camera_size)
        if h <= 0 or w <= 0:
            raise ValueError(f"camera_size must be positive, got {camera_size}")
        self.camera_hw = (int(h), int(w))
        self.cameras = ["agentview", "robot0_eye_in_hand"] if wrist_camera else ["agentview"]
        self.max_steps = int(max_steps) if max_steps is not None else SUITE_MAX_STEPS[suite]
        if self.max_steps < 1 or settle_steps < 0:
            raise ValueError(f"need max_steps >= 1 and settle_steps >= 0, got {self.max_steps}, {settle_steps}")
        self.settle_steps = int(settle_steps)
        self.render_gpu_device_id = int(render_gpu_device_id)
        self._lazy = bool(lazy_render)
        self.elapsed = 0
        # where this simulator's time goes (read by LiberoEnv.collection_seconds): stepping and resetting
        # (physics and renders), renders alone, and simulator steps run (settle steps included)
        self.seconds = {"step": 0.0, "reset": 0.0, "render": 0.0}
        self.sim_steps = 0
        self._env = None
        self._build()

    # -- construction ------------------------------------------------------------------
    def _build(self) -> None:
        _, get_libero_path, OffScreenRenderEnv = _import_libero()
        if self._env is not None:
            self.close()
        task = self.suite.get_task(self.task_id)
        self.instruction = str(task.language)
        self.task_name = str(task.name)
        self.init_states = load_init_states(self.suite, self.task_id)
        bddl = os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
        h, w = self.camera_hw
        try:
            with self._scene_rng(None):  # the task's build draws, equal in every build
                self._env = OffScreenRenderEnv(
                    bddl_file_name=bddl,
                    camera_names=list(self.cameras),
                    camera_heights=h,
                    camera_widths=w,
                    hard_reset=False,  # soft resets by default; `reset(hard=True)` flips it for one call
                    ignore_done=True,  # the step budget is ours (robosuite would raise past its horizon)
                    render_gpu_device_id=self.render_gpu_device_id,
                )
                self._env.reset()
        except Exception as err:  # EGL/OSMesa missing shows up here as GL/ctypes errors
            if any(s in repr(err).lower() for s in ("egl", "opengl", "osmesa", "glfw", "gl context", "libgl")):
                raise RuntimeError(
                    f"headless rendering failed with MUJOCO_GL={os.environ.get('MUJOCO_GL')}: {err}; run ./setup.sh "
                    "(Debian libegl1 libegl-mesa0 libgl1-mesa-dri) or export MUJOCO_GL=osmesa"
                ) from err
            raise
        self._make_current()
        self._pin_placement()
        self._set_cameras(not self._lazy)

    def set_task(self, task: int | str) -> None:
        """Switch to another task of the suite: rebuilds the simulation (seconds)."""
        task_id = resolve_task_id(self.suite, task)
        if task_id != self.task_id:
            self.task_id = task_id
            self._build()

    def seed_jitter(self, seed: int | None) -> None:
        """Restart the generator that "upstream" resets draw LIBERO's fixture jitter from."""
        self._upstream_rng = np.random.RandomState(None if seed is None else int(seed) % 2**32)

    @contextlib.contextmanager
    def _scene_rng(self, init_state_id: int | None) -> Iterator[None]:
        """Run LIBERO's random draws (numpy's global generator) from this scene's generator, then restore the caller's."""
        caller = np.random.get_state()
        if self.fixture_placement == "pinned":
            self._placement_seed = scene_seed(self.seed, self.suite_name, self.task_id, init_state_id)
            np.random.seed(self._placement_seed)
        else:
            np.random.set_state(self._upstream_rng.get_state())
        try:
            yield
        finally:
            self._placement_seed = None
            if self.fixture_placement == "upstream":
                self._upstream_rng.set_state(np.random.get_state())
            np.random.set_state(caller)

    def _pin_placement(self) -> None:
        """Restart the pinned generator where LIBERO samples the placements (after every build).

        How much a reset draws before it varies (a rebuilt model's resets draw more than the first
        model's), so seeding only at the start of a reset would give a hard reset another scene.
        """
        sampler = self._env.env.placement_initializer
        if getattr(sampler, "_ript_pinned", False):
            return
        sample = sampler.sample

        def pinned_sample(*args, **kwargs):
            if self._placement_seed is not None:
                np.random.seed(self._placement_seed)
            return sample(*args, **kwargs)

        sampler.sample = pinned_sample
        sampler._ript_pinned = True

    @property
    def n_init_states(self) -> int:
        """How many shipped init states the task has: the valid init_state_id range."""
        return len(self.init_states)

    @property
    def robosuite_env(self) -> BDDLBaseDomain:
        """The underlying robosuite environment (LIBERO's BDDL domain)."""
        return self._env.env

    @property
    def lazy_render(self) -> bool:
        """Cameras render only on a decision step's last simulator step (same images, less time)."""
        return self._lazy

    @lazy_render.setter
    def lazy_render(self, value: bool) -> None:
        self._lazy = bool(value)
        self._set_cameras(not self._lazy)

    # -- cameras ------------------------------------------------------------------------
    def _camera_observables(self):
        obs = self._env.env._observables
        return [obs[CAMERAS[c][0]] for c in self.cameras]

    def _set_cameras(self, enabled: bool) -> None:
        ref = self._env.env._observables[_SYNC_REFERENCE]
        for ob in self._camera_observables():
            ob.set_enabled(enabled)  # resets its clock ...
            # ... so copy the proprio clock: robosuite then samples the camera at the same sub-step
            ob._time_since_last_sample = ref._time_since_last_sample
            ob._sampled = ref._sampled
            ob._current_delay = ref._current_delay

    def _make_current(self) -> None:
        """Make this simulator's GL context current and have every render do so too.

        robosuite renders into whichever GL context is current, and a freed context
        (another simulator closed, or the old one of a hard reset, whenever the garbage
        collector gets to it) calls eglReleaseThread: with several simulators in one
        process (SerialEnv, train + eval envs) frames came out as garbage without this.
        """
        ctx = getattr(self._env.env.sim, "_render_context_offscreen", None)
        if ctx is None:
            return
        if not getattr(ctx, "_ript_guarded", False):
            render = ctx.render

            def guarded_render(*args, **kwargs):
                start = time.perf_counter()
                ctx.gl_ctx.make_current()
                try:
                    return render(*args, **kwargs)
                finally:
                    self.seconds["render"] += time.perf_counter() - start

            ctx.render = guarded_render
            ctx._ript_guarded = True
        ctx.gl_ctx.make_current()

    def _free_renderer(self) -> None:
        # robosuite's MjRenderContext.__del__ frees MuJoCo's GL objects in whichever context is
        # current, i.e. possibly another simulator's (its framebuffers then read back garbage):
        # free them here, in their own context, before robosuite drops the renderer.
        ctx = getattr(self._env.env.sim, "_render_context_offscreen", None)
        if ctx is not None:
            ctx.gl_ctx.make_current()
            ctx.con.free()

    def _check_success(self) -> bool:
        return bool(self._env.check_success())

    def _read(self, obs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {CAMERAS[c][0]: np.ascontiguousarray(obs[CAMERAS[c][0]].transpose(2, 0, 1)) for c in self.cameras}
        for name in PROPRIO:
            out[name] = np.asarray(obs[name], dtype=np.float32)
        return out

    # -- episode ------------------------------------------------------------------------
    def reset(self, init_state_id: int, *, hard: bool = False) -> dict[str, np.ndarray]:
        """Restore init state `init_state_id` and settle; returns the first observation."""
        if not 0 <= int(init_state_id) < self.n_init_states:
            raise ValueError(
                f"init_state_id {init_state_id} out of range for task {self.task_id} of {self.suite_name}: "
                f"use 0..{self.n_init_states - 1}"
            )
        start = time.perf_counter()
        self._make_current()
        try:
            if hard:  # LIBERO's default: rebuild model, sim and renderer (seconds), then place as a soft reset does
                with self._scene_rng(None):
                    self._rebuild()
            with self._scene_rng(int(init_state_id)):
                return self._restore(int(init_state_id))
        finally:
            self.seconds["reset"] += time.perf_counter() - start

    def _rebuild(self) -> None:
        env = self._env
        self._free_renderer()
        env.env.hard_reset = True
        try:
            env.reset()
        finally:
            env.env.hard_reset = False
        gc.collect()  # free the old renderer now rather than at a random later point
        self._make_current()  # guard the new renderer
        self._pin_placement()  # and the new model's sampler

    def _restore(self, init_state_id: int) -> dict[str, np.ndarray]:
        env = self._env
        env.reset()
        # A soft reset keeps the robot model, whose gripper remembers its last command
        # (robosuite ramps `current_action`); a rebuilt model starts from zero: match it.
        for robot in env.env.robots:
            grippers = robot.gripper.values() if isinstance(robot.gripper, dict) else [robot.gripper]
            for gripper in grippers:
                gripper.current_action = np.zeros(gripper.dof)
        obs = env.set_init_state(self.init_states[init_state_id])
        for i in range(self.settle_steps):
            if self._lazy and i == self.settle_steps - 1:
                self._set_cameras(True)
            obs, _, _, _ = env.step(SETTLE_ACTION)
        if self._lazy:
            if self.settle_steps == 0:
                self._set_cameras(True)
                obs = env.env._get_observations(force_update=True)
            self._set_cameras(False)
        self.elapsed = 0
        self.sim_steps += self.settle_steps
        return self._read(obs)

    def step(self, actions: np.ndarray) -> tuple[dict[str, np.ndarray], bool, int, bool]:
        """Run actions [n, 7] in order; stop at success or the step budget.

        Returns (observation, success, steps_executed, truncated). Cameras render
        once, at the last executed step; if success ends the chunk early, the
        terminal frame is rendered from the current state instead (nothing acts on it).
        """
        if self.elapsed >= self.max_steps:
            raise RuntimeError(f"episode over after {self.elapsed} steps (max_steps={self.max_steps}): call reset()")
        env = self._env
        start = time.perf_counter()
        self._make_current()
        n_exec = min(len(actions), self.max_steps - self.elapsed)
        success, obs, executed = False, None, 0
        for i in range(n_exec):
            last = i == n_exec - 1
            if self._lazy and last:
                self._set_cameras(True)
            obs, _, _, _ = env.step(actions[i])
            executed += 1
            success = self._check_success()
            if success and not last:
                if self._lazy:
                    self._set_cameras(True)
                obs = env.env._get_observations(force_update=True)
                break
        if self._lazy:
            self._set_cameras(False)
        self.elapsed += executed
        self.sim_steps += executed
        self.seconds["step"] += time.perf_counter() - start
        truncated = (not success) and self.elapsed >= self.max_steps
        return self._read(obs), success, executed, truncated

    def close(self) -> None:
        """Frees the renderer before the env, and collects now, so GL contexts don't pile up."""
        if self._env is not None:
            self._free_renderer()
            self._env.close()
            self._env = None
            gc.collect()  # release the GL context now, not in the middle of another simulator's render


def _validate_actions(action: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if tuple(action.shape) != shape:
        raise ValueError(f"action has shape {tuple(action.shape)}, expected {shape}: pass one action [7] "
                         f"(action_chunk=None) or a chunk [n, 7] (action_chunk=n)")
    if not np.isfinite(action).all():
        raise ValueError("action contains NaN or inf: check the policy output before stepping")
    return np.clip(action, -1.0, 1.0).reshape(-1, ACTION_DIM)


class LiberoEnv(EnvBase):
    """One LIBERO task as a TorchRL env: a step is one action [7] or a chunk [n, 7].

    Output (keys from `ript.envs.keys`): raw uint8 CHW camera images in simulator
    orientation (agentview, and eye-in-hand unless `wrist_camera=False`), eef_pos [3],
    eef_quat [4] (xyzw), gripper_qpos [2] (float32) under "observation"; the
    instruction as NonTensor "task"; int64 "task_id", "init_state_id", "group_id";
    "success" (bool [1], any step of the chunk), "steps_executed" (int64 [1]),
    "reward" = float(success), "done"/"terminated" (success)/"truncated" (max_steps
    simulator steps ran, settle steps excluded).

    Protocol (openpi): after each reset, `settle_steps` (10) steps of
    [0, 0, 0, 0, 0, 0, -1]; `max_steps` defaults per suite (220/280/300/520/400).
    Actions are clipped to [-1, 1]; a chunk stops early at success.

    Initial states and RIPT groups: `init_state_mode` "random" (seeded by
    `set_seed`), "cycle" (from `init_state_id` on) or "fixed" (`init_state_id`).
    With `group_repeats=K` an init state is replayed for K consecutive episodes and
    "group_id" = `group_id_offset` + the group counter.

    Choosing contexts (curriculum): `push_contexts([...])` queues contexts
    {"init_state_id": i, "group_id": g, "task_id": t (optional, same suite: a
    rebuild)} that the next resets consume first-in first-out, whoever calls reset
    (a `torchrl.collectors.Collector` included); once the queue is empty the mode
    above takes over again. For batched envs use `ript.envs.push_contexts(env,
    ctxs, worker=i)`: the call is broadcast to the workers, worker i (its
    `worker_index`, set by `make_libero_env`) queues them, and a bad context
    raises in the caller instead of killing the worker process.

    Resets are soft (restore the init state without rebuilding simulator and
    renderer); `reset_mode="hard"` uses LIBERO's rebuild every time and
    `hard_reset_every=K` every K-th episode.

    Scenes: with `fixture_placement="pinned"` (default) the fixtures of a context
    come from (`scene_seed`, suite, task, init state), so the K rollouts of a group
    share one scene in every worker; `scene_seed` defaults to `seed` (else 0) and,
    unlike the per-worker seeds `set_seed` hands out, is the same in every worker.
    "upstream" keeps LIBERO's per-reset jitter, seeded by `set_seed`.
    `set_fixture_placement` switches the mode between episodes (e.g. for evaluation).
    """

    _batch_locked = True

    def __init__(
        self,
        suite: str,
        task: int | str,
        *,
        action_chunk: int | None = None,
        camera_size: int | tuple[int, int] = 256,
        wrist_camera: bool = True,
        max_steps: int | None = None,
        settle_steps: int = 10,
        init_state_mode: Literal["random", "cycle", "fixed"] = "random",
        init_state_id: int = 0,
        group_repeats: int = 1,
        group_id_offset: int = 0,
        reset_mode: Literal["soft", "hard"] = "soft",
        hard_reset_every: int | None = None,
        lazy_render: bool = True,
        worker_index: int = 0,
        render_gpu_device_id: int = -1,
        render_threads: int | None = None,
        fixture_placement: Literal["pinned", "upstream"] = "pinned",
        scene_seed: int | None = None,
        seed: int | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if init_state_mode not in ("random", "cycle", "fixed"):
            raise ValueError(f"init_state_mode must be 'random', 'cycle' or 'fixed', got {init_state_mode!r}")
        if reset_mode not in ("soft", "hard"):
            raise ValueError(f"reset_mode must be 'soft' or 'hard', got {reset_mode!r}")
        if group_repeats < 1:
            raise ValueError(f"group_repeats must be >= 1, got {group_repeats}")
        if action_chunk is not None and action_chunk < 1:
            raise ValueError(f"action_chunk must be None (one action) or >= 1, got {action_chunk}")
        if hard_reset_every is not None and hard_reset_every < 1:
            raise ValueError(f"hard_reset_every must be None or >= 1, got {hard_reset_every}")
        super().__init__(device=device, batch_size=torch.Size([]))
        self.sim = LiberoSimulator(
            suite, task, camera_size=camera_size, wrist_camera=wrist_camera, max_steps=max_steps,
            settle_steps=settle_steps, lazy_render=lazy_render, render_gpu_device_id=render_gpu_device_id,
            render_threads=render_threads, fixture_placement=fixture_placement, seed=scene_seed if scene_seed is not None else (seed or 0),
        )
        if seed is not None:
            self.sim.seed_jitter(seed)
        self.suite_name = suite
        self.action_chunk = action_chunk
        self._action_shape = (ACTION_DIM,) if action_chunk is None else (int(action_chunk), ACTION_DIM)
        self.init_state_mode = init_state_mode
        self.init_state_id = int(init_state_id)
        self._check_init_state(self.init_state_id)
        self.group_repeats = int(group_repeats)
        self.group_id_offset = int(group_id_offset)
        self.reset_mode = reset_mode
        self.hard_reset_every = hard_reset_every
        self.worker_index = int(worker_index)
        self._contexts: deque[dict[str, int]] = deque()
        self._rng = np.random.default_rng(seed)
        self._episodes = 0  # episodes started by mode-driven resets (drives cycling and groups)
        self._resets = 0  # every reset (drives hard_reset_every)
        self._busy_s = 0.0  # seconds inside _step and _reset (collection_seconds)
        self._current: dict[str, int] = {}
        self._group_state: int | None = None
        self._make_specs()

    # -- specs --------------------------------------------------------------------------
    def _make_specs(self) -> None:
        h, w = self.sim.camera_hw
        obs = Composite(shape=())
        for cam in self.sim.cameras:
            obs[CAMERAS[cam][1][1]] = Bounded(0, 255, shape=(3, h, w), dtype=torch.uint8, device=self.device)
        for key, n in ((keys.EEF_POS, 3), (keys.EEF_QUAT, 4), (keys.GRIPPER_QPOS, 2)):
            obs[key[1]] = Unbounded(shape=(n,), dtype=torch.float32, device=self.device)
        scalar = lambda: Unbounded(shape=(), dtype=torch.int64, device=self.device)  # noqa: E731
        self.observation_spec = Composite(
            {
                keys.OBS: obs,
                keys.TASK: NonTensor(shape=(), example_data=self.sim.instruction, device=self.device),
                keys.TASK_ID: scalar(),
                keys.INIT_STATE_ID: scalar(),
                keys.GROUP_ID: scalar(),
                keys.SUCCESS: Categorical(2, shape=(1,), dtype=torch.bool, device=self.device),
                keys.STEPS_EXECUTED: Unbounded(shape=(1,), dtype=torch.int64, device=self.device),
            },
            shape=(),
        )
        self.action_spec = Bounded(-1.0, 1.0, shape=self._action_shape, dtype=torch.float32, device=self.device)
        self.reward_spec = Unbounded(shape=(1,), dtype=torch.float32, device=self.device)
        self.done_spec = Composite(
            {k: Categorical(2, shape=(1,), dtype=torch.bool, device=self.device) for k in ("done", "terminated", "truncated")},
            shape=(),
        )

    # -- contexts -----------------------------------------------------------------------
    def _check_init_state(self, i: int) -> None:
        if not 0 <= i < self.sim.n_init_states:
            raise ValueError(f"init_state_id {i} out of range for {self.suite_name} task {self.sim.task_id}: "
                             f"use 0..{self.sim.n_init_states - 1}")

    def push_contexts(
        self, contexts: Iterable[Mapping[str, int]], worker: int | None = None, *, raise_errors: bool = True
    ) -> int | str:
        """Queue contexts for the next resets (FIFO); returns the queue length.

        Each context: {"init_state_id": int, "group_id": int (optional: the mode's
        counter otherwise), "task_id": int (optional, same suite)}. `worker` limits
        the call to the env whose `worker_index` matches (for batched envs). With
        raise_errors=False a bad context returns the error message instead (an
        exception would kill a ParallelEnv worker): `ript.envs.push_contexts` uses it.
        """
        if worker is not None and int(worker) != self.worker_index:
            return len(self._contexts)
        try:
            return self._push(contexts)
        except (ValueError, TypeError) as err:
            if raise_errors:
                raise
            return str(err)

    def _push(self, contexts: Iterable[Mapping[str, int]]) -> int:
        parsed = []
        for ctx in contexts:
            extra = set(ctx) - {keys.INIT_STATE_ID, keys.GROUP_ID, keys.TASK_ID}
            if extra or keys.INIT_STATE_ID not in ctx:
                raise ValueError(f"context {dict(ctx)} needs 'init_state_id' and optionally 'group_id', 'task_id'")
            c = {k: int(v) for k, v in ctx.items()}
            if keys.TASK_ID in c:
                resolve_task_id(self.sim.suite, c[keys.TASK_ID])
            if c.get(keys.TASK_ID, self.sim.task_id) == self.sim.task_id:
                self._check_init_state(c[keys.INIT_STATE_ID])
            parsed.append(c)
        self._contexts.extend(parsed)
        return len(self._contexts)

    def set_fixture_placement(self, mode: str, worker: int | None = None) -> str:
        """Switch between "pinned" and "upstream" fixtures from the next reset on; returns the previous mode.

        A method rather than an attribute so a Parallel/SerialEnv broadcasts it to its workers.
        """
        previous = self.sim.fixture_placement
        if worker is None or int(worker) == self.worker_index:
            self.sim.fixture_placement = check_fixture_placement(mode)
        return previous

    def collection_seconds(self, clear: bool = True) -> dict[str, float]:
        """This worker's time since the last clear: physics, rendering, the rest of its steps and resets
        (actions in, observations out), and simulator steps run. Through a ParallelEnv: one dict per worker."""
        sim = self.sim.seconds
        out = {"physics": sim["step"] + sim["reset"] - sim["render"], "render": sim["render"],
               "worker_other": max(self._busy_s - sim["step"] - sim["reset"], 0.0), "sim_steps": float(self.sim.sim_steps)}
        if clear:
            self.sim.seconds = dict.fromkeys(sim, 0.0)
            self.sim.sim_steps, self._busy_s = 0, 0.0
        return out

    def pending_contexts(self) -> int:
        """How many queued contexts are not consumed yet."""
        return len(self._contexts)

    def clear_contexts(self) -> int:
        """Drop queued contexts; returns how many were dropped."""
        n = len(self._contexts)
        self._contexts.clear()
        return n

    def _next_context(self) -> dict[str, int]:
        if self._contexts:
            ctx = self._contexts.popleft()
            if keys.TASK_ID in ctx and ctx[keys.TASK_ID] != self.sim.task_id:
                self.sim.set_task(ctx[keys.TASK_ID])
                self._check_init_state(ctx[keys.INIT_STATE_ID])
            group = ctx.get(keys.GROUP_ID)
            return {keys.INIT_STATE_ID: ctx[keys.INIT_STATE_ID], keys.GROUP_ID: -1 if group is None else group}
        k, n = self.group_repeats, self.sim.n_init_states
        group = self._episodes // k
        if self.init_state_mode == "fixed":
            init = self.init_state_id
        elif self.init_state_mode == "cycle":
            init = (self.init_state_id + group) % n
        else:
            if self._episodes % k == 0 or self._group_state is None:
                self._group_state = int(self._rng.integers(n))
            init = self._group_state
        self._episodes += 1
        return {keys.INIT_STATE_ID: init, keys.GROUP_ID: self.group_id_offset + group}

    # -- TorchRL hooks ------------------------------------------------------------------
    def _set_seed(self, seed: int | None) -> None:
        self._rng = np.random.default_rng(seed)
        self._group_state = None
        # the upstream jitter's generator; pinned scenes keep `scene_seed`, equal in every worker
        self.sim.seed_jitter(seed)

    def _obs_td(self, obs: dict[str, np.ndarray], success: bool, executed: int) -> TensorDict:
        td = TensorDict({}, batch_size=[], device=self.device)
        for cam in self.sim.cameras:
            name, key = CAMERAS[cam]
            td.set(key, torch.from_numpy(obs[name]))
        for name, key in PROPRIO.items():
            td.set(key, torch.from_numpy(obs[name]))
        td.set(keys.TASK, self.sim.instruction)
        td.set(keys.TASK_ID, torch.tensor(self.sim.task_id, dtype=torch.int64))
        td.set(keys.INIT_STATE_ID, torch.tensor(self._current[keys.INIT_STATE_ID], dtype=torch.int64))
        td.set(keys.GROUP_ID, torch.tensor(self._current[keys.GROUP_ID], dtype=torch.int64))
        td.set(keys.SUCCESS, torch.tensor([success]))
        td.set(keys.STEPS_EXECUTED, torch.tensor([executed], dtype=torch.int64))
        return td

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs: Any) -> TensorDictBase:
        start = time.perf_counter()
        self._current = self._next_context()
        self._resets += 1
        hard = self.reset_mode == "hard" or (
            self.hard_reset_every is not None and self._resets % self.hard_reset_every == 0
        )
        obs = self.sim.reset(self._current[keys.INIT_STATE_ID], hard=hard)
        td = self._obs_td(obs, False, 0)
        td.update(self.full_done_spec.zero())
        self._busy_s += time.perf_counter() - start
        return td

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        start = time.perf_counter()
        action = tensordict.get("action").detach().to("cpu", torch.float64).numpy()
        actions = _validate_actions(action, self._action_shape)
        obs, success, executed, truncated = self.sim.step(actions)
        td = self._obs_td(obs, success, executed)
        td.set("reward", torch.tensor([float(success)], dtype=torch.float32))
        td.set("terminated", torch.tensor([success]))
        td.set("truncated", torch.tensor([truncated]))
        td.set("done", torch.tensor([success or truncated]))
        self._busy_s += time.perf_counter() - start
        return td

    def close(self, *, raise_if_closed: bool = True) -> None:
        """Closes the simulator too (it may be absent when __init__ failed part-way)."""
        if getattr(self, "sim", None) is not None:
            self.sim.close()
        super().close(raise_if_closed=raise_if_closed)
