"""Scripted grasping expert shared by the tasks: hover, align, descend, close, lift.

Experts act from the observation (``state``) plus the privileged object state in ``info``, and
emit the same normalized actions as a policy, so their demonstrations are learnable.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def wrap_grasp_yaw(yaw: float, symmetry: float = np.pi / 2) -> float:
    """Gripper yaw in ``[-symmetry/2, symmetry/2)`` equivalent to an object yaw (cube: 90 deg)."""
    return float((yaw + symmetry / 2) % symmetry - symmetry / 2)


class GraspExpert:
    """Phase machine over end-effector waypoints; tasks say what to grasp (:meth:`target_object`).

    Args:
        env: the task environment (wrapped or not); its config gives the action scaling.
        noise: standard deviation of Gaussian noise added to the motion part of each action.
        seed: seed of the noise generator.
    """

    hover_m = 0.08  # approach height above the object's centre
    grasp_dz_m = -0.005  # fingertips relative to the object's centre when closing
    lift_z_m = 0.16  # end-effector height to lift to
    close_steps = 4  # steps to wait with the gripper closing before lifting
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
        self.phase = "approach"
        self._timer = 0
        self._hold: np.ndarray | None = None

    def target_object(self, info: dict[str, Any]) -> tuple[np.ndarray, float]:
        """Position ``(3,)`` of the object to grasp and the gripper yaw to grasp it with."""
        raise NotImplementedError

    def act(self, obs: dict[str, np.ndarray], info: dict[str, Any]) -> np.ndarray:
        ee = np.asarray(obs["state"][:4], dtype=np.float64)  # x, y, z, yaw
        obj, yaw = self.target_object(info)
        grip = -1.0
        if self.phase == "approach":
            goal = np.array([obj[0], obj[1], obj[2] + self.hover_m, yaw])
            err = goal - ee
            if (
                np.hypot(*err[:2]) < self.xy_tol_m
                and abs(err[3]) < self.yaw_tol_rad
                and abs(err[2]) < 3 * self.z_tol_m
            ):
                self.phase = "descend"
        if self.phase == "descend":
            goal = np.array([obj[0], obj[1], max(obj[2] + self.grasp_dz_m, 0.005), yaw])
            err = goal - ee
            if abs(err[2]) < self.z_tol_m and np.hypot(*err[:2]) < 1.5 * self.xy_tol_m:
                self.phase, self._hold = "close", goal.copy()
        if self.phase == "close":
            goal, grip = self._hold, 1.0
            self._timer += 1
            if self._timer > self.close_steps:
                self.phase = "lift"
        if self.phase == "lift":
            goal, grip = np.array([*self._hold[:2], self.lift_z_m, self._hold[3]]), 1.0
        return self._action(goal - ee, grip)

    def _action(self, err: np.ndarray, grip: float) -> np.ndarray:
        motion = np.empty(4)
        motion[:3] = err[:3] / self.config.max_step_m
        motion[3] = err[3] / self.config.max_yaw_step_rad
        if self.noise:
            motion += self.rng.normal(0.0, self.noise, size=4)
        if not self.config.yaw_control:
            motion = motion[:3]
        return np.clip(np.append(motion, grip), -1.0, 1.0).astype(np.float32)
