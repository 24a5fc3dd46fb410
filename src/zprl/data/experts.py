"""Scripted experts and simulated operators for mixed-quality demonstrations (robomimic "MH" style).

An expert is a waypoint state machine over privileged simulator state (object, peg and bin poses read
straight from the robosuite env): approach above the object, descend, close the gripper, lift, and,
for Can and Square, carry the object to its goal, lower it and release. Each step it servos robosuite's
OSC_POSE controller (delta actions in [-1, 1]^7) towards the current waypoint.

An :class:`Operator` plays an expert at one quality tier, like robomimic's better/okay/worse human
operators: ``expert`` is clean, ``noisy`` adds Gaussian action noise and short hesitations, ``poor``
adds large noise, long hesitations, a slowly drifting position bias and usually a missed first grasp
followed by a regrasp. All randomness comes from the seed passed to :meth:`Operator.reset`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from zprl.data.operators import GRIPPER_OPEN, OperatorProfile, SimulatedOperator
from zprl.data.schema import QUALITY_TIERS
from zprl.envs.robomimic_env import RobomimicEnv

# OSC_POSE scales a unit action to 5 cm of position and 0.5 rad of rotation (controller output_max).
POS_SCALE, ROT_SCALE = 0.05, 0.5
# Proportional servo gains: the commanded delta is half the remaining error, capped per waypoint.
POS_GAIN, ROT_GAIN = 0.5 / POS_SCALE, 0.5 / ROT_SCALE
OPEN, CLOSE = GRIPPER_OPEN, 1.0
YAW_TOL = 0.1  # rad; a waypoint counts as reached only once the fingers are this well aligned
PICK_PHASES = ("approach", "descend", "close", "lift")
NUT_PLACE_YAWS = (np.pi / 2, np.pi, -np.pi / 2)  # square-nut headings whose handle does not point along +x


def wrap_angle(angle: float, period: float = 2 * np.pi) -> float:
    """Wrap ``angle`` into [-period/2, period/2)."""
    return (angle + period / 2) % period - period / 2


def yaw_of(mat: np.ndarray) -> float:
    """Heading of a rotation matrix's x-axis in the world xy-plane."""
    return float(np.arctan2(mat[1, 0], mat[0, 0]))


def top_down_grasp_matrix(finger_yaw: float) -> np.ndarray:
    """Gripper orientation pointing straight down with the finger axis (eef x) at ``finger_yaw``."""
    c, s = np.cos(finger_yaw), np.sin(finger_yaw)
    return np.array([[c, s, 0.0], [s, -c, 0.0], [0.0, 0.0, -1.0]])


@dataclass(frozen=True)
class Waypoint:
    """Target of one phase: gripper-site position (m), finger-axis yaw (rad), gripper command, pacing."""

    pos: np.ndarray
    yaw: float
    gripper: float
    tol: float = 0.01  # position error (m) under which the waypoint counts as reached
    settle: int = 0  # steps to stay once reached (lets the fingers close or open)
    max_speed: float = 1.0  # cap on the norm of the position action
    timeout: int = 80  # steps after which the phase ends anyway (e.g. fingers blocked by the object)


class ScriptedExpert:
    """Waypoint state machine for a top-down pick; subclasses add what happens after the lift.

    Subclasses set ``phases`` (starting with :data:`PICK_PHASES`), ``grasp_pos``/``grasp_yaw`` (where
    and how to grasp) and ``place_waypoint`` (the phases after ``lift``). If the object is not in hand
    once the lift is done, the expert goes back to ``approach`` and grasps again.
    """

    phases: tuple[str, ...] = PICK_PHASES
    hover: float = 0.08  # approach height above the grasp point (m)
    lift_z: float = 1.0  # world height of the gripper after lifting (m)
    miss_distance: float = 0.05  # sideways offset of a deliberately missed grasp (m)
    holding_radius: float = 0.03  # gripper-to-grasp-point distance that counts as holding (m)

    def __init__(self, env: RobomimicEnv):
        self.env = env
        self.reset()

    @property
    def suite(self):
        """The robosuite environment (rebuilt by robosuite on hard resets, so always looked up)."""
        return self.env.robomimic_env.env

    @property
    def sim(self):
        return self.suite.sim

    def reset(self, miss_side: int = 0) -> None:
        """Start a new episode (after ``env.reset``); ``miss_side`` = +-1 makes the first grasp miss."""
        self.phase = self.phases[0]
        self.miss_side = miss_side
        self._steps_in_phase = 0
        self._steps_reached = 0
        self.home_yaw = self.finger_yaw()

    # -- privileged simulator state ----------------------------------------------------------------
    def eef_pos(self) -> np.ndarray:
        return self.sim.data.site_xpos[self.suite.robots[0].eef_site_id].copy()

    def eef_mat(self) -> np.ndarray:
        return self.sim.data.site_xmat[self.suite.robots[0].eef_site_id].reshape(3, 3).copy()

    def finger_yaw(self) -> float:
        """World heading of the axis along which the fingers close (the gripper site's x-axis)."""
        return yaw_of(self.eef_mat())

    def body_pose(self, body_id: int) -> tuple[np.ndarray, np.ndarray]:
        return self.sim.data.body_xpos[body_id].copy(), self.sim.data.body_xmat[body_id].reshape(3, 3).copy()

    def nearest_yaw(self, yaw: float, symmetry: float) -> float:
        """The yaw equivalent to ``yaw`` under the grasp ``symmetry`` (rad) closest to the start yaw."""
        return self.home_yaw + wrap_angle(yaw - self.home_yaw, symmetry)

    def holding(self) -> bool:
        """Whether the grasp point is still between the fingers (checked after lifting)."""
        return bool(np.linalg.norm(self.eef_pos() - self.grasp_pos()) < self.holding_radius)

    # -- task-specific parts -----------------------------------------------------------------------
    def grasp_pos(self) -> np.ndarray:
        raise NotImplementedError

    def grasp_yaw(self) -> float:
        raise NotImplementedError

    def missed_grasp_offset(self) -> np.ndarray:
        """Where a missed grasp closes, relative to the grasp point: beside the object, across the fingers."""
        yaw = self.grasp_yaw()
        return self.miss_side * self.miss_distance * np.array([-np.sin(yaw), np.cos(yaw), 0.0])

    def place_waypoint(self, phase: str) -> Waypoint:
        raise NotImplementedError(f"{type(self).__name__} has no phase {phase!r}")

    # -- state machine -----------------------------------------------------------------------------
    def waypoint(self, phase: str) -> Waypoint:
        """The target for ``phase`` given the current simulator state."""
        grasp = self.grasp_pos() + (self.missed_grasp_offset() if self.miss_side else 0.0)
        if phase == "approach":
            return Waypoint(grasp + [0.0, 0.0, self.hover], self.grasp_yaw(), OPEN, tol=0.02)
        if phase == "descend":
            return Waypoint(grasp, self.grasp_yaw(), OPEN, tol=0.006, max_speed=0.5, timeout=40)
        if phase == "close":
            return Waypoint(grasp, self.grasp_yaw(), CLOSE, tol=0.03, settle=8, timeout=20)
        if phase == "lift":
            eef = self.eef_pos()
            return Waypoint(np.array([eef[0], eef[1], self.lift_z]), self.finger_yaw(), CLOSE, tol=0.02,
                            max_speed=0.6)
        return self.place_waypoint(phase)

    def _next_phase(self) -> str:
        if self.phase == "lift" and not self.holding():  # the object slipped or was missed: regrasp
            self.miss_side = 0
            return "approach"
        return self.phases[min(self.phases.index(self.phase) + 1, len(self.phases) - 1)]

    def act(self) -> np.ndarray:
        """One OSC_POSE action towards the current waypoint, advancing the phase once it is reached."""
        wp = self.waypoint(self.phase)
        self._steps_in_phase += 1
        reached = (np.linalg.norm(wp.pos - self.eef_pos()) < wp.tol
                   and abs(wrap_angle(wp.yaw - self.finger_yaw())) < YAW_TOL)
        self._steps_reached += int(reached)
        if self._steps_reached > wp.settle or self._steps_in_phase > wp.timeout:
            self.phase = self._next_phase()
            self._steps_in_phase = self._steps_reached = 0
            wp = self.waypoint(self.phase)
        return self.servo(wp)

    def servo(self, wp: Waypoint) -> np.ndarray:
        """Proportional OSC_POSE action (position, axis-angle rotation, gripper) towards ``wp``."""
        pos = (wp.pos - self.eef_pos()) * POS_GAIN
        norm = np.linalg.norm(pos)
        if norm > wp.max_speed:
            pos *= wp.max_speed / norm
        rot_err = Rotation.from_matrix(top_down_grasp_matrix(wp.yaw) @ self.eef_mat().T).as_rotvec()
        rot = np.clip(rot_err * ROT_GAIN, -1.0, 1.0)
        return np.concatenate([pos, rot, [wp.gripper]]).astype(np.float32)


class LiftExpert(ScriptedExpert):
    """Lift: grasp the cube across two opposite faces and raise it."""

    def grasp_pos(self) -> np.ndarray:
        return self.body_pose(self.suite.cube_body_id)[0]

    def grasp_yaw(self) -> float:
        return self.nearest_yaw(yaw_of(self.body_pose(self.suite.cube_body_id)[1]), np.pi / 2)


class PlaceExpert(ScriptedExpert):
    """Pick, then carry the held object so that its body frame reaches ``goal_pos`` and release it."""

    phases = (*PICK_PHASES, "carry", "lower", "release", "retreat")
    carry_height: float = 0.1  # height of the object above its goal while carrying (m)
    retreat_z: float = 1.05  # world height of the gripper after releasing (m)

    def object_pos(self) -> np.ndarray:
        raise NotImplementedError

    def goal_pos(self) -> np.ndarray:
        raise NotImplementedError

    def carry_yaw(self) -> float:
        """Gripper yaw while carrying; by default the current one."""
        return self.finger_yaw()

    def moved_object(self, target: np.ndarray) -> np.ndarray:
        """Gripper position that brings the held object to ``target`` (closed loop on the object pose)."""
        return self.eef_pos() + target - self.object_pos()

    def place_waypoint(self, phase: str) -> Waypoint:
        goal = self.goal_pos()
        if phase == "carry":
            return Waypoint(self.moved_object(goal + [0.0, 0.0, self.carry_height]), self.carry_yaw(), CLOSE,
                            tol=0.01, max_speed=0.8, timeout=100)
        if phase == "lower":
            return Waypoint(self.moved_object(goal), self.carry_yaw(), CLOSE, tol=0.01, max_speed=0.4, timeout=60)
        if phase == "release":
            return Waypoint(self.eef_pos(), self.finger_yaw(), OPEN, tol=np.inf, settle=6)
        if phase == "retreat":
            eef = self.eef_pos()
            return Waypoint(np.array([eef[0], eef[1], self.retreat_z]), self.finger_yaw(), OPEN)
        return super().place_waypoint(phase)


class CanExpert(PlaceExpert):
    """PickPlaceCan: grasp the can near its top, carry it over the walls into its bin quadrant, drop it."""

    grasp_height = 0.025  # grasp above the can's centre so the palm clears its top (m)
    lift_z = 1.05  # clear the 10 cm bin walls
    miss_distance = 0.06
    holding_radius = 0.04

    def object_pos(self) -> np.ndarray:
        obj = self.suite.objects[self.suite.object_id]
        return self.body_pose(self.suite.obj_body_id[obj.name])[0]

    def grasp_pos(self) -> np.ndarray:
        return self.object_pos() + [0.0, 0.0, self.grasp_height]

    def grasp_yaw(self) -> float:
        return self.home_yaw  # the can is round

    def goal_pos(self) -> np.ndarray:
        # halfway between the centre of the can's bin quadrant and its corner nearest the robot (the
        # centre is at the edge of the arm's reach), can centre 2 cm above its resting height
        bin_size = np.asarray(self.suite.bin_size)
        return self.suite.target_bin_placements[self.suite.object_id] + [-bin_size[0] / 8, -bin_size[1] / 8, 0.1]


class SquareExpert(PlaceExpert):
    """NutAssemblySquare: grasp the nut's handle, align the nut square to the peg, lower it and release."""

    carry_height = 0.17  # nut height above its goal while moving it over the peg (clears the peg top by ~7 cm)
    holding_radius = 0.035

    def nut_pose(self) -> tuple[np.ndarray, np.ndarray]:
        return self.body_pose(self.suite.obj_body_id[self.suite.nuts[self.suite.nut_id].name])

    def object_pos(self) -> np.ndarray:
        return self.nut_pose()[0]

    def grasp_pos(self) -> np.ndarray:
        handle = self.suite.nuts[self.suite.nut_id].important_sites["handle"]
        return self.sim.data.site_xpos[self.sim.model.site_name2id(handle)].copy()

    def grasp_yaw(self) -> float:
        # fingers close across the handle, i.e. along the nut's y-axis
        return self.nearest_yaw(yaw_of(self.nut_pose()[1]) + np.pi / 2, np.pi)

    def missed_grasp_offset(self) -> np.ndarray:
        # past the end of the handle, away from the nut
        return self.miss_distance * self.nut_pose()[1][:, 0] * np.array([1.0, 1.0, 0.0])

    def carry_yaw(self) -> float:
        # Turn the held nut square to the (axis-aligned) peg with its handle not pointing away from the
        # robot, as the far side of the peg is at the edge of the arm's reach; of those three headings,
        # take the one that leaves the wrist least rotated from its start.
        nut_yaw = yaw_of(self.nut_pose()[1])
        headings = [self.finger_yaw() + wrap_angle(nut_target - nut_yaw) for nut_target in NUT_PLACE_YAWS]
        return min(headings, key=lambda yaw: abs(wrap_angle(yaw - self.home_yaw)))

    def goal_pos(self) -> np.ndarray:
        peg_pos = self.body_pose(self.suite.peg1_body_id)[0]
        return np.array([peg_pos[0], peg_pos[1], self.suite.table_offset[2] + 0.035])


EXPERTS: dict[str, type[ScriptedExpert]] = {"lift": LiftExpert, "can": CanExpert, "square": SquareExpert}


@dataclass(frozen=True)
class RobomimicProfile(OperatorProfile):
    """How one quality tier of simulated robomimic operator deviates from the scripted expert.

    ``action_noise`` applies to the six arm action dims (position and rotation).
    """

    drift: float = 0.0  # per-step innovation std of a slowly varying bias on the position action
    missed_grasp_prob: float = 0.0  # chance that the first grasp misses the object (then regrasps)


# One profile per name in zprl.data.schema.QUALITY_TIERS.
OPERATOR_PROFILES: dict[str, RobomimicProfile] = {
    "expert": RobomimicProfile(),
    "noisy": RobomimicProfile(action_noise=0.1, hesitation_prob=0.02, hesitation_steps=(3, 8)),
    "poor": RobomimicProfile(action_noise=0.15, hesitation_prob=0.015, hesitation_steps=(8, 20), drift=0.02,
                             missed_grasp_prob=0.6),
}
TIER_IDS: dict[str, int] = {name: i for i, name in enumerate(QUALITY_TIERS)}  # the LeRobot quality_tier column
DRIFT_DECAY = 0.95


class Operator(SimulatedOperator):
    """A simulated teleoperator: a scripted robomimic expert played at one quality tier, deterministic per seed."""

    action_size = 7

    def __init__(self, expert: ScriptedExpert, tier: str):
        self.expert = expert
        super().__init__(tier, OPERATOR_PROFILES)

    def start_episode(self) -> None:
        missed = self.rng.random() < self.profile.missed_grasp_prob
        self.expert.reset(miss_side=int(self.rng.choice([-1, 1])) if missed else 0)
        self._bias = np.zeros(3)

    def expert_action(self) -> np.ndarray:
        return self.expert.act()

    def perturb(self, action: np.ndarray) -> np.ndarray:
        p = self.profile
        self._bias = DRIFT_DECAY * self._bias + self.rng.normal(0.0, p.drift, 3)
        action[:3] += self._bias
        action[:6] += self.rng.normal(0.0, p.action_noise, 6)
        return action


def make_operator(env: RobomimicEnv, task: str, tier: str) -> Operator:
    """The scripted expert for ``task`` driving ``env`` (unwrapped), played at quality ``tier``."""
    if task not in EXPERTS:
        raise ValueError(f"No scripted expert for task {task!r}. Choose one of {sorted(EXPERTS)}.")
    return Operator(EXPERTS[task](env), tier)
