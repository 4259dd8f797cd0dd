"""Scripted experts shared by the tasks: phase machines over end-effector waypoints.

Experts act from the observation (``state``) plus the privileged object state in ``info``, and
emit the same normalized actions as a policy, so their demonstrations are learnable. A phase is
a method ``_<phase>(ee, info) -> (goal, grip)`` that may hand over to the next phase, which
then acts in the same step.

* :class:`GraspExpert`: hover over an object, align, descend, close, lift (cube pick);
* :class:`PlaceExpert`: grasp, carry over ``info["goal_pos"]``, lower, release (place, stack);
* :class:`PushExpert`: closed fingers behind the object, push it along the line to the goal.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from envs.base import FINGER_OPEN


def wrap_grasp_yaw(yaw: float, symmetry: float = np.pi / 2) -> float:
    """Gripper yaw in ``[-symmetry/2, symmetry/2)`` equivalent to an object yaw (cube: 90 deg)."""
    return float((yaw + symmetry / 2) % symmetry - symmetry / 2)


class ScriptedExpert:
    """Noise, seeding and action scaling common to the experts; subclasses write the phases.

    Args:
        env: the task environment (wrapped or not); its config gives the action scaling.
        noise: standard deviation of Gaussian noise added to the motion part of each action.
        seed: seed of the noise generator.
    """

    first_phase = "approach"
    #: Stored with the demonstrations (``attrs.expert_version``): a store is never appended to
    #: with another version's episodes. Bump it when a change alters the trajectories.
    version = 1
    xy_tol_m, z_tol_m, yaw_tol_rad = 0.008, 0.006, 0.05

    def __init__(self, env: Any, noise: float = 0.0, seed: int | None = None):
        if noise < 0:
            raise ValueError(f"expert noise must be >= 0, got {noise}")
        self.config = env.unwrapped.config
        self.noise = noise
        self.rng = np.random.default_rng(seed)
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        """Start a new episode; with ``seed``, the noise of this episode depends on it alone."""
        if seed is not None:
            # A stream distinct from the environment's own generator seeded with the same value.
            self.rng = np.random.default_rng([seed, 0x5E])
        self.phase = self.first_phase
        self._timer = 0
        self._hold: np.ndarray | None = None
        self._gap: tuple[float, float] | None = None  # gripper gap at the last two observations

    def act(self, obs: dict[str, np.ndarray], info: dict[str, Any]) -> np.ndarray:
        ee = np.asarray(obs["state"][:4], dtype=np.float64)  # x, y, z, yaw
        gap = float(obs["state"][4])
        self._gap = (self._gap[1] if self._gap else gap, gap)
        for _ in range(8):  # a finished phase hands over to the next within the same step
            phase = self.phase
            goal, grip = getattr(self, f"_{phase}")(ee, info)
            if self.phase == phase:
                break
        return self._action(goal - ee, grip)

    def _wait(self, steps: int, next_phase: str) -> None:
        """Count a step of a timed phase; after ``steps`` of them go to ``next_phase``."""
        self._timer += 1
        if self._timer > steps:
            self.phase, self._timer = next_phase, 0

    def _action(self, err: np.ndarray, grip: float, max_speed: float = 1.0) -> np.ndarray:
        motion = np.empty(4)
        motion[:3] = err[:3] / self.config.max_step_m
        motion[3] = err[3] / self.config.max_yaw_step_rad
        if max_speed < 1.0:
            motion = np.clip(motion, -max_speed, max_speed)
        if self.noise:
            motion += self.rng.normal(0.0, self.noise, size=4)
        if not self.config.yaw_control:
            motion = motion[:3]
        return np.clip(np.append(motion, grip), -1.0, 1.0).astype(np.float32)


class GraspExpert(ScriptedExpert):
    """Hover over the object, align the yaw, descend, close, then :attr:`after_grasp`."""

    hover_m = 0.08  # approach height above the object's centre
    grasp_dz_m = -0.005  # fingertips relative to the object's centre when closing
    lift_z_m = 0.16  # end-effector height to lift to
    close_steps = 4  # steps to wait with the gripper closing before lifting
    #: End the close phase when the observed gripper gap has settled on the object instead of
    #: after ``close_steps``: the switch is then visible in two consecutive ``state``
    #: observations, so a policy with a 2-step history can tell "still closing" from "lift now"
    #: (a timer is hidden state it cannot see).
    close_until_settled = False
    settle_m = 0.001  # the gap changed by less than this between two observations: settled
    after_grasp = "lift"
    obj = "cube"  # the object to grasp (its ``<obj>_pos`` and ``<obj>_yaw`` in ``info``)

    def target_object(self, info: dict[str, Any]) -> tuple[np.ndarray, float]:
        """Position ``(3,)`` of the object to grasp and the gripper yaw to grasp it with (a cube
        face: 90 degree symmetry)."""
        return info[f"{self.obj}_pos"], wrap_grasp_yaw(float(info[f"{self.obj}_yaw"]))

    def _approach(self, ee, info):
        obj, yaw = self.target_object(info)
        goal = np.array([obj[0], obj[1], obj[2] + self.hover_m, yaw])
        err = goal - ee
        if (
            np.hypot(*err[:2]) < self.xy_tol_m
            and abs(err[3]) < self.yaw_tol_rad
            and abs(err[2]) < 3 * self.z_tol_m
        ):
            self.phase = "descend"
        return goal, -1.0

    def _descend(self, ee, info):
        obj, yaw = self.target_object(info)
        goal = np.array([obj[0], obj[1], max(obj[2] + self.grasp_dz_m, 0.005), yaw])
        err = goal - ee
        if abs(err[2]) < self.z_tol_m and np.hypot(*err[:2]) < 1.5 * self.xy_tol_m:
            self.phase, self._hold = "close", goal.copy()
        return goal, -1.0

    def _close(self, ee, info):
        if not self.close_until_settled:
            self._wait(self.close_steps, self.after_grasp)
        elif self._settled():
            self.phase, self._timer = self.after_grasp, 0
        else:  # a gap that never settles (a slipping grasp) still ends the close in time
            self._wait(3 * self.close_steps, self.after_grasp)
        return self._hold, 1.0

    def _settled(self) -> bool:
        """The fingers closed (gap below 90 % of fully open) and stopped between the last two
        observations."""
        before, now = self._gap
        return now < 0.9 * 2 * FINGER_OPEN and abs(now - before) < self.settle_m

    def _lift(self, ee, info):
        return np.array([*self._hold[:2], self.lift_z_m, self._hold[3]]), 1.0


class PlaceExpert(GraspExpert):
    """Grasp the object, lift it, carry it over ``info["goal_pos"]`` (where its centre should
    end up), lower it there, open and retreat. Carrying and lowering are closed-loop on the
    object's own position, so a grasp that slipped is corrected for."""

    after_grasp = "carry"
    version = 2  # 2: lifts when the gripper gap settles (1: after close_steps)
    # Measured: with the 4-step timer, the oracle policy stepping 1 action at a time halted with
    # the cube grasped on the table (it cannot see the timer); cube pick keeps the timer (its
    # oracle reaches 100 % and its published figures were measured with it).
    close_until_settled = True
    carry_dz_m = 0.06  # object above its goal while carrying
    release_dz_m = 0.003  # object above its goal when the gripper opens
    place_tol_m = 0.004
    release_steps = 3

    def _object_error(self, info, dz: float) -> np.ndarray:
        obj, _ = self.target_object(info)
        return np.asarray(info["goal_pos"], np.float64) + [0.0, 0.0, dz] - obj

    def _carry(self, ee, info):
        err = self._object_error(info, self.carry_dz_m)
        if err[2] > 0.015:  # up first, sideways once clear of whatever stands on the table
            err[:2] = self._hold[:2] - ee[:2]
        elif np.hypot(*err[:2]) < self.place_tol_m and abs(err[2]) < 0.01:
            self.phase = "lower"
        return ee + np.append(err, self._hold[3] - ee[3]), 1.0

    def _lower(self, ee, info):
        err = self._object_error(info, self.release_dz_m)
        goal = ee + np.append(err, self._hold[3] - ee[3])
        if abs(err[2]) < self.place_tol_m and np.hypot(*err[:2]) < 1.5 * self.place_tol_m:
            self.phase, self._hold = "release", goal.copy()
        return goal, 1.0

    def _release(self, ee, info):
        self._wait(self.release_steps, "retreat")
        return self._hold, -1.0

    def _retreat(self, ee, info):
        return np.array([*self._hold[:2], self._hold[2] + 0.1, self._hold[3]]), -1.0


class PushExpert(ScriptedExpert):
    """Push ``info["<obj>_pos"]`` towards ``info["goal_pos"]`` with closed fingers: hover behind
    the object on the line to the goal, descend, push along the line (steering back onto it),
    and back off to re-approach when the object left the line."""

    obj = "cube"
    hover_m = 0.08
    push_z_m = 0.01  # fingertip height while pushing
    finger_half_m = 0.012  # half extent of the closed finger block along the push
    clearance_m = 0.012
    push_speed = 0.5  # fraction of the largest step while pushing
    lateral_tol_m = 0.015

    def _line(self, info) -> tuple[np.ndarray, np.ndarray, float]:
        obj = np.asarray(info[f"{self.obj}_pos"], np.float64)
        delta = np.asarray(info["goal_pos"], np.float64)[:2] - obj[:2]
        d = delta / max(np.linalg.norm(delta), 1e-9)
        reach = float(info[f"{self.obj}_half"]) * np.sqrt(2) + self.finger_half_m  # any yaw
        return obj, d, reach

    def _start(self, info) -> np.ndarray:
        obj, d, reach = self._line(info)
        xy = obj[:2] - d * (reach + self.clearance_m)
        return np.array(
            [xy[0], xy[1], self.push_z_m, wrap_grasp_yaw(np.arctan2(d[1], d[0]), np.pi)]
        )

    def _approach(self, ee, info):
        goal = self._start(info)
        goal[2] += self.hover_m
        err = goal - ee
        if np.hypot(*err[:2]) < self.xy_tol_m and abs(err[3]) < 2 * self.yaw_tol_rad:
            self.phase = "descend"
        return goal, 1.0

    def _descend(self, ee, info):
        goal = self._start(info)
        if abs(goal[2] - ee[2]) < self.z_tol_m:
            self.phase = "push"
        return goal, 1.0

    def _push(self, ee, info):
        obj, d, _ = self._line(info)
        rel = obj[:2] - ee[:2]
        along, lateral = rel @ d, rel @ np.array([-d[1], d[0]])
        if abs(lateral) > self.lateral_tol_m or along < 0:
            self.phase, self._hold = "back_off", ee.copy()
            return ee, 1.0
        step = self.push_speed * self.config.max_step_m
        xy = ee[:2] + d * step + np.array([-d[1], d[0]]) * lateral
        return np.array([xy[0], xy[1], self.push_z_m, ee[3]]), 1.0

    def _back_off(self, ee, info):
        goal = np.array([*self._hold[:2], self.push_z_m + self.hover_m, self._hold[3]])
        if ee[2] > goal[2] - 3 * self.z_tol_m:
            self.phase = "approach"
        return goal, 1.0

    def _action(self, err, grip, max_speed=1.0):
        speed = self.push_speed if self.phase == "push" else max_speed
        return super()._action(err, grip, speed)
