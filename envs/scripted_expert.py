"""A privileged scripted expert for LIBERO pick-and-place tasks (libero_object, bowl-on-plate tasks).

Why it exists: RIPT needs a starting policy that sometimes succeeds, and real PI0 LIBERO
weights cannot be downloaded here. This expert reads object poses from the simulator
(privileged information the policy never sees) and produces demonstrations that a tiny
PI0 is behaviour-cloned on (`recipes/bc_pretrain.py`).

It acts at the policy's decision cadence: `act(n)` returns a whole chunk of n actions
planned open loop from the current simulator state, exactly as the policy will act
(it only sees a new observation after each chunk). Inside a chunk the end-effector
motion is predicted with a simple measured model of LIBERO's OSC_POSE controller
(about 1.15 cm of travel per step at action 1.0, about 0.11 rad of rotation), and the
phase machine advances on the predicted state, so replanning after each chunk corrects
the model's errors.

Strategy (top-down grasp): hover above the object with the fingers turned across the
object's narrow horizontal axis, descend, close, lift clear of the container's rim,
move above the container, lower a little, open. Objects wider than the open gripper
(LIBERO's bowls) are pinched at the rim instead: fingers radial, one inside the wall.
Flat containers (plates) get the object lowered until it almost touches, then released.
Heights are measured from the table top under the object, so the same parameters work
on libero_object's floor scenes and the table scenes of libero_spatial / libero_goal.
A grasp that did not lift the object is retried from the hover. No LIBERO code is imported here: it works on the robosuite
environment that `LiberoSimulator.robosuite_env` returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

POS_PER_STEP = 0.0115  # m of eef travel per control step at |action| = 1 (OSC_POSE, measured)
ROT_PER_STEP = 0.11  # rad per control step at |action| = 1
GRIP_SITE = "gripper0_grip_site"
FINGER_BODIES = ("gripper0_leftfinger", "gripper0_rightfinger")
OPEN, CLOSE = -1.0, 1.0

# phases
HOVER, DESCEND, GRASP, LIFT, CARRY, LOWER, RELEASE, DONE = range(8)
PHASE_NAMES = ("hover", "descend", "grasp", "lift", "carry", "lower", "release", "done")


@dataclass
class ExpertParams:
    """Geometry and timing of the scripted motion (metres, steps); defaults solve libero_object."""

    hover_height: float = 0.10  # above the grasp point before descending
    grasp_depth: float = 0.01  # grip site above the object's centre (fingertips sit ~1 cm lower)
    min_grasp_z: float = 0.018  # above the table: keeps the fingertips off it
    carry_z: float = 0.26  # above the table: grip site while carrying (clears the basket rim and handle)
    release_z: float = 0.20  # above the table: grip site where the gripper opens over a deep container
    carry_z_flat: float = 0.15  # above the table: grip site while carrying to a flat container
    rim_depth: float = 0.02  # rim pinch: grip site below the rim's top
    rim_inset: float = 0.007  # rim pinch: grip site inside the rim's outer extent (on the wall)
    flat_container: float = 0.04  # containers lower than this (plates) get the object set down on them
    place_gap: float = 0.015  # object's bottom above a flat container's top when it is released
    close_steps: int = 8  # steps with the gripper closing before lifting
    rim_close_steps: int = 16  # a rim pinch closes the fingers all the way onto a thin wall
    release_steps: int = 6
    pos_tol: float = 0.012  # waypoint reached (predicted), m
    yaw_tol: float = 0.08  # rad
    horizon: float = 3.0  # P-gain: cover the remaining error in about this many steps
    lifted_margin: float = 0.03  # object must rise this much above its start for the grasp to count
    hand_half_length: float = 0.09  # hand footprint along the finger axis (half), m
    hand_half_width: float = 0.03  # hand footprint across it (half), m
    hand_above_grip: float = 0.03  # hand's lowest point above the grip site, m
    fingertip_below_grip: float = 0.01  # fingertips below the grip site, m
    max_opening: float = 0.072  # widest chord the open fingers may straddle, m


def _axis_angle(rot: np.ndarray) -> np.ndarray:
    """Rotation vector (axis * angle) of a 3x3 rotation matrix."""
    cos = np.clip((np.trace(rot) - 1.0) / 2.0, -1.0, 1.0)
    angle = np.arccos(cos)
    if angle < 1e-6:
        return np.zeros(3)
    vec = np.array([rot[2, 1] - rot[1, 2], rot[0, 2] - rot[2, 0], rot[1, 0] - rot[0, 1]])
    if np.pi - angle < 1e-4:  # near pi the antisymmetric part vanishes: use the diagonal
        axis = np.sqrt(np.clip((np.diag(rot) + 1.0) / 2.0, 0.0, None))
        axis *= np.sign(vec + (vec == 0))
        return axis / np.linalg.norm(axis) * angle
    return vec / (2.0 * np.sin(angle)) * angle


def _rot_z(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _wrap(angle: float) -> float:
    return float((angle + np.pi) % (2 * np.pi) - np.pi)


class PickPlaceExpert:
    """Scripted pick-and-place of `object_name` into `container_name` (privileged poses).

    Args:
        robosuite_env: LIBERO's robosuite environment (`LiberoSimulator.robosuite_env`).
        object_name / container_name: keys of `robosuite_env.obj_body_id`; default to the
            task's `obj_of_interest` (LIBERO lists the object first, the container second).
        params: geometry and timing.

    Call `reset()` after every env reset, then `act(n)` at every decision step.
    """

    def __init__(
        self,
        robosuite_env: Any,
        object_name: str | None = None,
        container_name: str | None = None,
        params: ExpertParams | None = None,
    ) -> None:
        self.env = robosuite_env
        interest = list(getattr(robosuite_env, "obj_of_interest", []) or [])
        if object_name is None or container_name is None:
            if len(interest) < 2:
                raise ValueError("the task names no (object, container) of interest: pass object_name and container_name")
            object_name = object_name or interest[0]
            container_name = container_name or interest[1]
        bodies = robosuite_env.obj_body_id
        for name in (object_name, container_name):
            if name not in bodies:
                raise ValueError(f"unknown object {name!r}: use one of {sorted(bodies)}")
        self.object_name, self.container_name = object_name, container_name
        self.params = params or ExpertParams()
        model = robosuite_env.sim.model
        self._obj_bid = bodies[object_name]
        self._cont_bid = bodies[container_name]
        self._site = model.site_name2id(GRIP_SITE)
        self._fingers = [model.body_name2id(b) for b in FINGER_BODIES]
        self._extents: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._obj_extent = self._local_extent(self._obj_bid)
        self.reset()

    # -- privileged state ---------------------------------------------------------------
    def _subtree(self, root: int) -> set[int]:
        model = self.env.sim.model
        out = set()
        for b in range(model.nbody):
            p = b
            while p not in (0, root):
                p = model.body_parentid[p]
            if p == root:
                out.add(b)
        return out

    def _local_extent(self, bid: int) -> tuple[np.ndarray, np.ndarray]:
        """(min, max) corners of the body's collision geoms in its own frame (MuJoCo's geom AABBs)."""
        model, data = self.env.sim.model, self.env.sim.data
        rot, pos = data.body_xmat[bid].reshape(3, 3), data.body_xpos[bid]
        bodies = self._subtree(bid)
        signs = np.array(np.meshgrid([-1, 1], [-1, 1], [-1, 1])).reshape(3, -1).T
        geoms = [g for g in range(model.ngeom) if model.geom_bodyid[g] in bodies]
        # what the fingers touch: collision geoms (a bowl's visual mesh box, rotated, is far wider)
        colliding = [g for g in geoms if model.geom_contype[g] or model.geom_conaffinity[g]]
        pts = []
        for g in colliding or geoms:
            centre, half = model.geom_aabb[g][:3], model.geom_aabb[g][3:]
            grot, gpos = data.geom_xmat[g].reshape(3, 3), data.geom_xpos[g]
            world = gpos + (grot @ (centre + signs * half).T).T
            pts.append((world - pos) @ rot)
        if not pts:
            return np.full(3, -0.02), np.full(3, 0.02)
        pts = np.concatenate(pts)
        return pts.min(0), pts.max(0)

    def _obstacles(self, hand_z: float) -> list[tuple[np.ndarray, float]]:
        """(centre xy, radius) of every other object whose top rises above the hand's bottom."""
        data = self.env.sim.data
        out = []
        for name, bid in self.env.obj_body_id.items():
            if bid == self._obj_bid:
                continue
            lo, hi = self._extents.setdefault(bid, self._local_extent(bid))
            rot, pos = data.body_xmat[bid].reshape(3, 3), data.body_xpos[bid]
            corners = pos + (rot @ np.array(np.meshgrid(*zip(lo, hi))).reshape(3, -1)).T
            if corners[:, 2].max() < hand_z:
                continue
            xy = corners[:, :2]
            c = (xy.min(0) + xy.max(0)) / 2.0
            out.append((c, float(np.linalg.norm(xy.max(0) - xy.min(0)) / 2.0)))
        return out

    def _clearance(self, point: np.ndarray, finger_yaw: float, obstacles: list[tuple[np.ndarray, float]]) -> float:
        """Smallest gap between the hand's footprint (a rectangle) and the obstacles' circles."""
        p = self.params
        u = np.array([np.cos(finger_yaw), np.sin(finger_yaw)])
        v = np.array([-u[1], u[0]])
        gap = np.inf
        for centre, radius in obstacles:
            d = centre - point
            du = max(abs(d @ u) - p.hand_half_length, 0.0)
            dv = max(abs(d @ v) - p.hand_half_width, 0.0)
            gap = min(gap, float(np.hypot(du, dv)) - radius)
        return gap

    def _eef(self) -> tuple[np.ndarray, np.ndarray]:
        data = self.env.sim.data
        return data.site_xpos[self._site].copy(), data.site_xmat[self._site].reshape(3, 3).copy()

    def _finger_axis(self) -> np.ndarray:
        data = self.env.sim.data
        axis = data.xpos[self._fingers[1]] - data.xpos[self._fingers[0]]
        return axis / (np.linalg.norm(axis) + 1e-9)

    def object_pos(self) -> np.ndarray:
        """The grasped object's position now (a copy), to check lifts and placements against."""
        return self.env.sim.data.body_xpos[self._obj_bid].copy()

    # -- planning -----------------------------------------------------------------------
    def reset(self) -> None:
        """Plan the grasp and the placement from the current (just reset) scene."""
        p = self.params
        data = self.env.sim.data
        self.phase = HOVER
        self._count = 0
        self.retries = 0
        self._hold_dz: float | None = None  # object z minus grip z while carried
        obj_pos = data.body_xpos[self._obj_bid].copy()
        obj_rot = data.body_xmat[self._obj_bid].reshape(3, 3)
        lo, hi = self._obj_extent
        size = hi - lo
        centre = obj_pos + obj_rot @ ((lo + hi) / 2.0)
        self._obj_start_z = float(obj_pos[2])
        self.table_z = float(centre[2] - size[2] / 2.0)  # the object rests on the table at reset
        self.rim_pinch = bool(min(size[0], size[1]) > p.max_opening)
        if self.rim_pinch:
            point, finger_yaw, grasp_z = self._plan_rim(centre, size)
        else:
            point, finger_yaw, grasp_z = self._plan_top_down(centre, size, obj_rot)
        finger = self._finger_axis()
        yaw = _wrap(finger_yaw - np.arctan2(finger[1], finger[0]))
        if yaw > np.pi / 2:  # the gripper is symmetric: turn the short way
            yaw -= np.pi
        elif yaw < -np.pi / 2:
            yaw += np.pi
        _, eef_rot = self._eef()
        self._target_rot = _rot_z(yaw) @ eef_rot
        self._grasp = np.array([point[0], point[1], grasp_z])
        # placement: the object's centre over the container's, for a plate lowered until it almost touches
        cont_lo, cont_hi = self._extents.setdefault(self._cont_bid, self._local_extent(self._cont_bid))
        cont_rot = data.body_xmat[self._cont_bid].reshape(3, 3)
        cont_centre = data.body_xpos[self._cont_bid] + cont_rot @ ((cont_lo + cont_hi) / 2.0)
        target_xy = cont_centre[:2] + (self._grasp[:2] - centre[:2])
        flat = cont_hi[2] - cont_lo[2] < p.flat_container
        carry_z = self.table_z + (p.carry_z_flat if flat else p.carry_z)
        if flat:
            cont_top = float(cont_centre[2] + (cont_hi[2] - cont_lo[2]) / 2.0)
            release_z = cont_top + p.place_gap + (grasp_z - self.table_z)
        else:
            release_z = self.table_z + p.release_z
        self._carry = np.array([target_xy[0], target_xy[1], carry_z])
        self._release = np.array([target_xy[0], target_xy[1], release_z])

    def _plan_top_down(self, centre: np.ndarray, size: np.ndarray, obj_rot: np.ndarray) -> tuple[np.ndarray, float, float]:
        """Fingers across the narrower horizontal axis; among small yaw offsets and shifts along
        the long axis, the grasp whose hand clears the neighbours. Returns (xy, finger yaw, grip z)."""
        p = self.params
        grasp_z = max(float(centre[2]) + p.grasp_depth, self.table_z + p.min_grasp_z)
        narrow = 0 if size[0] < size[1] else 1
        across = obj_rot[:, narrow].copy()
        across[2] = 0.0
        across /= np.linalg.norm(across) + 1e-9
        along = np.array([-across[1], across[0], 0.0])
        base_yaw = float(np.arctan2(across[1], across[0]))
        half_long = size[1 - narrow] / 2.0
        obstacles = self._obstacles(grasp_z + p.hand_above_grip)
        best, best_score = (0.0, 0.0), -np.inf
        for dyaw in np.deg2rad([0, 15, -15, 30, -30, 40, -40]):
            if size[narrow] / max(np.cos(dyaw), 1e-3) > p.max_opening:
                continue
            for shift in (0.0, 0.01, -0.01, 0.02, -0.02, 0.03, -0.03):
                if abs(shift) > max(half_long - 0.015, 0.0):
                    continue
                point = centre[:2] + shift * along[:2]
                clearance = self._clearance(point, base_yaw + dyaw, obstacles)
                score = min(clearance, 0.02) - 0.02 * abs(dyaw) - 0.1 * abs(shift)
                if score > best_score:
                    best, best_score = (float(dyaw), float(shift)), score
        self.grasp_clearance = best_score
        dyaw, shift = best
        return centre[:2] + shift * along[:2], base_yaw + dyaw, grasp_z

    def _plan_rim(self, centre: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, float, float]:
        """Pinch the rim of a round object too wide to straddle: fingers radial, grip site just
        inside the outer radius; prefers the side facing the robot, then the clearest side."""
        p = self.params
        radius = min(size[0], size[1]) / 2.0 - p.rim_inset
        grasp_z = float(centre[2] + size[2] / 2.0) - p.rim_depth
        # the outer finger reaches below the rim: low neighbours (a stove's burner) block it too
        obstacles = self._obstacles(grasp_z - p.fingertip_below_grip)
        robot_side = float(np.arctan2(-centre[1], -0.6 - centre[0]))  # the arm's base sits at about x = -0.6
        best, best_score = (centre[:2], robot_side), -np.inf
        for dtheta in np.deg2rad([0, 20, -20, 40, -40, 60, -60, 90, -90]):
            theta = robot_side + dtheta
            direction = np.array([np.cos(theta), np.sin(theta)])
            point = centre[:2] + radius * direction
            clearance = self._clearance(point, theta, obstacles)
            score = min(clearance, 0.02) - 0.01 * abs(dtheta)
            if score > best_score:
                best, best_score = (point, theta), score
        self.grasp_clearance = best_score
        return best[0], best[1], grasp_z

    def _waypoint(self) -> tuple[np.ndarray | None, float]:
        """(target position or None to hold, gripper command) of the current phase."""
        p = self.params
        if self.phase == HOVER:
            return self._grasp + np.array([0.0, 0.0, p.hover_height]), OPEN
        if self.phase == DESCEND:
            return self._grasp, OPEN
        if self.phase == GRASP:
            return self._grasp, CLOSE
        if self.phase == LIFT:
            return np.array([self._grasp[0], self._grasp[1], self._carry[2]]), CLOSE
        if self.phase == CARRY:
            return self._carry, CLOSE
        if self.phase == LOWER:
            return self._release, CLOSE
        return None, OPEN  # RELEASE, DONE: open and hold still

    def act(self, n: int) -> np.ndarray:
        """The next n actions [n, 7] (OSC deltas in [-1, 1], gripper -1 open / +1 close)."""
        p = self.params
        pos, rot = self._eef()
        # re-check the grasp from the real state at each decision step
        if self.phase in (CARRY, LOWER):
            obj_z = float(self.object_pos()[2])
            if self._hold_dz is None:  # first check after lifting: did the object come up?
                held = obj_z >= self._obj_start_z + p.lifted_margin
                self._hold_dz = obj_z - float(pos[2]) if held else None
            else:  # later: does it still hang from the hand (a plate sits lower than the lift margin)?
                held = obj_z - float(pos[2]) >= self._hold_dz - p.lifted_margin
            if not held:
                self.phase, self._count, self._hold_dz = HOVER, 0, None  # dropped or missed: start over
                self.retries += 1
        rot_err = _axis_angle(self._target_rot @ rot.T)
        self._advance_on_state(pos, rot_err)  # waypoints count as reached only in the real state
        actions = np.zeros((n, 7))
        for k in range(n):
            target, grip = self._waypoint()
            a = np.zeros(7)
            if target is not None:
                err = target - pos
                a[:3] = np.clip(err / (POS_PER_STEP * p.horizon), -1.0, 1.0)
                pos = pos + a[:3] * POS_PER_STEP
            a[3:6] = np.clip(rot_err / (ROT_PER_STEP * p.horizon), -1.0, 1.0)
            rot_err = rot_err - a[3:6] * ROT_PER_STEP
            a[6] = grip
            actions[k] = a
            self._advance_timed()
        return actions

    def _advance_on_state(self, pos: np.ndarray, rot_err: np.ndarray) -> None:
        """Leave a waypoint phase once the measured eef pose is at its target (checked per chunk)."""
        p = self.params
        target, _ = self._waypoint()
        if target is None or np.linalg.norm(target - pos) >= p.pos_tol:
            return
        if self.phase == HOVER and np.linalg.norm(rot_err) >= p.yaw_tol:
            return
        nxt = {HOVER: DESCEND, DESCEND: GRASP, LIFT: CARRY, CARRY: LOWER, LOWER: RELEASE}
        if self.phase in nxt:
            self.phase, self._count = nxt[self.phase], 0

    def _advance_timed(self) -> None:
        """Timed phases (closing, opening) advance step by step, inside a chunk too."""
        p = self.params
        self._count += 1
        if self.phase == GRASP and self._count >= (p.rim_close_steps if self.rim_pinch else p.close_steps):
            self.phase, self._count = LIFT, 0
        elif self.phase == RELEASE and self._count >= p.release_steps:
            self.phase, self._count = DONE, 0

    @property
    def phase_name(self) -> str:
        """The current phase by name, for logs and failure messages."""
        return PHASE_NAMES[self.phase]


def make_expert(robosuite_env: Any, params: ExpertParams | None = None) -> PickPlaceExpert:
    """The scripted expert for a LIBERO task's scene (pick-and-place of its objects of interest).

    One strategy covers libero_object (top-down grasp into the basket) and the bowl-on-plate
    tasks of libero_spatial / libero_goal (rim pinch, set down on the plate); other task
    families (drawers, knobs, pushing) raise the ValueError of a scene without an
    (object, container) pair.
    """
    return PickPlaceExpert(robosuite_env, params=params)
