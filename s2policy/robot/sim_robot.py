"""A simulated robot: an ``envs/`` task behind :class:`RobotInterface`.

Each ``act`` advances the simulation by one control period; driven by the inference loop at the
task's control rate, the simulation runs in real time. Observations carry the wall-clock time at
which they were rendered.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from envs import STATE_KEYS
from s2policy.robot.interface import RobotInterface
from s2policy.task import TaskConfig


class SimRobot(RobotInterface):
    def __init__(
        self,
        task: TaskConfig,
        clock: Callable[[], float] = time.monotonic,
        max_episode_steps: int | None = None,
    ):
        self.task = task
        self.clock = clock
        self.env = task.make_env(max_episode_steps, terminate_on_success=False)
        self._obs: dict[str, Any] | None = None
        self._grip = -1.0
        self._success = False
        self._done = False

    def spec(self) -> dict[str, Any]:
        env = self.task.env
        return {
            "task": self.task.name,
            "cameras": list(env.cameras),
            "image_size": list(env.image_size),
            "action_dim": 5 if env.yaw_control else 4,
            "state_dim": len(STATE_KEYS),
            "state_names": list(STATE_KEYS),
            "control_hz": env.control_hz,
            "max_step_m": env.max_step_m,
            "max_yaw_step_rad": env.max_yaw_step_rad,
            "yaw_control": env.yaw_control,
        }

    def reset(self, seed: int | None = None) -> None:
        obs, _ = self.env.reset(seed=seed)
        self._obs = {**obs, "timestamp": self.clock()}
        self._grip, self._success, self._done = -1.0, False, False

    def observe(self) -> dict[str, Any]:
        if self._obs is None:
            raise RuntimeError("SimRobot.observe() before reset()")
        return self._obs

    def act(self, action: np.ndarray) -> None:
        action = np.asarray(action, dtype=np.float32)
        self._grip = float(action[-1])
        obs, _, terminated, truncated, info = self.env.step(action)
        self._obs = {**obs, "timestamp": self.clock()}
        self._success = self._success or bool(info["success"])
        self._done = bool(terminated or truncated)

    def hold(self) -> None:
        still = np.zeros(self.env.action_space.shape, dtype=np.float32)
        still[-1] = self._grip
        self.act(still)

    def status(self) -> dict[str, Any]:
        return {"success": self._success, "done": self._done}

    def close(self) -> None:
        self.env.close()
