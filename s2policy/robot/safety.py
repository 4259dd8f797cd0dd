"""Safety filter between the policy and the robot, and the watchdog rules of the loop.

Every rule that changes or refuses an action reports an event name; the loop logs them per tick.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

EVENTS = (
    "nonfinite",
    "workspace",
    "max_step",
    "max_yaw_step",
    "gripper",
    "stale_obs",
    "starved",
    "exception",
)


@dataclass
class SafetyConfig:
    """Limits in physical units (the filter converts normalized actions with the robot's spec)."""

    #: Box the end effector must stay in (m).
    workspace_low: tuple[float, float, float] = (-0.25, -0.25, 0.005)
    workspace_high: tuple[float, float, float] = (0.25, 0.25, 0.35)
    #: Largest end-effector translation per tick (m).
    max_step_m: float = 0.02
    #: Largest yaw change per tick (rad).
    max_yaw_step_rad: float = 0.2
    #: Gripper command range.
    gripper_min: float = -1.0
    gripper_max: float = 1.0
    #: Hold when the latest observation is older than this (s).
    max_obs_age_s: float = 0.3

    def __post_init__(self):
        lo, hi = np.asarray(self.workspace_low), np.asarray(self.workspace_high)
        if lo.shape != (3,) or hi.shape != (3,) or not (lo < hi).all():
            raise ValueError("workspace_low/high must be (x, y, z) with low < high")
        if self.max_step_m <= 0 or self.max_yaw_step_rad <= 0 or self.max_obs_age_s <= 0:
            raise ValueError("max_step_m, max_yaw_step_rad and max_obs_age_s must be > 0")
        if not -1 <= self.gripper_min < self.gripper_max <= 1:
            raise ValueError("need -1 <= gripper_min < gripper_max <= 1")


class SafetyFilter:
    """``filter(action, state) -> (action or None, events)``; ``None`` means: hold.

    The translation is clipped to the workspace box first and to ``max_step_m`` last, so no
    command moves the end effector farther than ``max_step_m``, even from outside the box.

    The box needs the end effector's position: ``state[:3]`` for the robots of this project's
    interface (``state`` = ee x, y, z, yaw, gripper; a spec without ``state_names``, or whose
    names begin ``ee_x, ee_y, ee_z``), or the indices a spec gives as ``ee_position``. A robot
    whose state is something else (joint angles) gets no box — never motion made up from a state
    read as a position — and a warning; its step, yaw and gripper limits still apply."""

    def __init__(self, cfg: SafetyConfig, robot_spec: dict[str, Any]):
        self.cfg = cfg
        self.scale = float(robot_spec["max_step_m"])
        self.yaw_scale = float(robot_spec["max_yaw_step_rad"])
        self.yaw = bool(robot_spec["yaw_control"])
        self.low, self.high = np.asarray(cfg.workspace_low), np.asarray(cfg.workspace_high)
        names = robot_spec.get("state_names")
        self.ee = robot_spec.get("ee_position")
        if self.ee is None and (names is None or list(names[:3]) == ["ee_x", "ee_y", "ee_z"]):
            self.ee = [0, 1, 2]
        if self.ee is None:
            logger.warning(
                "the robot's state (%s) holds no end-effector position (no ee_position in its "
                "spec): the workspace box is not applied, only the step limits",
                ", ".join(map(str, names[:4])),
            )

    def filter(self, action: np.ndarray, state: np.ndarray) -> tuple[np.ndarray | None, list[str]]:
        action = np.asarray(action, dtype=np.float64)
        if not np.isfinite(action).all():
            return None, ["nonfinite"]
        events = []
        out = np.clip(action, -1.0, 1.0)
        delta = out[:3] * self.scale  # metres
        if float(np.linalg.norm(delta)) > self.cfg.max_step_m:
            events.append("max_step")
        # the box first, the step limit last: the limit bounds the command that is sent, also
        # when the robot stands outside the box (it then moves back in bounded steps)
        if self.ee is None:  # no position to keep in a box
            pos = np.zeros(3)
            target = pos + delta
        else:
            pos = np.asarray(state, dtype=np.float64)[list(self.ee)]
            target = np.clip(pos + delta, self.low, self.high)
        if not np.allclose(target, pos + delta):
            events.append("workspace")
        delta = target - pos
        norm = float(np.linalg.norm(delta))
        if norm > self.cfg.max_step_m:
            delta *= self.cfg.max_step_m / norm
            if "max_step" not in events:
                events.append("max_step")
        out[:3] = np.clip(delta / self.scale, -1.0, 1.0)
        if self.yaw:
            yaw = out[3] * self.yaw_scale
            if abs(yaw) > self.cfg.max_yaw_step_rad:
                out[3] = np.sign(yaw) * self.cfg.max_yaw_step_rad / self.yaw_scale
                events.append("max_yaw_step")
        grip = np.clip(out[-1], self.cfg.gripper_min, self.cfg.gripper_max)
        if grip != out[-1]:
            events.append("gripper")
        out[-1] = grip
        return out.astype(np.float32), events


def observation_is_stale(obs: dict[str, Any], now: float, max_age_s: float) -> bool:
    return now - float(obs["timestamp"]) > max_age_s
