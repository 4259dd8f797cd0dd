"""What the inference loop needs from a robot, real or simulated, local or remote.

``observe()`` returns the same observation dict as the task's environment (``<camera>`` uint8
``(H, W, 3)`` images and ``state`` float32 ``(5,)``: end-effector x, y, z, yaw, gripper gap) plus
``timestamp``: when the observation was taken, in seconds of the robot's monotonic clock.
``act(action)`` applies one normalized action (the env's action space). ``hold()`` stops the
arm where it is, keeping the gripper as it is (a held object stays held).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np


class RobotInterface(ABC):
    @abstractmethod
    def spec(self) -> dict[str, Any]:
        """``{"task", "cameras", "image_size", "action_dim", "control_hz", "max_step_m",
        "max_yaw_step_rad", "yaw_control"}``: what the policy and the safety filter must know;
        a robot with cameras of several sizes gives ``image_sizes`` (camera -> ``[H, W]``), and
        ``state_dim``, ``state_names``, ``action_names`` let the loop check a checkpoint's state
        and names too (:class:`s2policy.data.spec.DataSpec`: a mismatch is refused at connect)."""

    @abstractmethod
    def reset(self, seed: int | None = None) -> None:
        """Start an episode (a simulator resets; a real arm goes to its home pose)."""

    @abstractmethod
    def observe(self) -> dict[str, Any]:
        """The latest observation with its ``timestamp``."""

    @abstractmethod
    def act(self, action: np.ndarray) -> None:
        """Apply one action ``(A,)`` in ``[-1, 1]``."""

    @abstractmethod
    def hold(self) -> None:
        """Stop safely: no motion, gripper unchanged."""

    def status(self) -> dict[str, Any]:
        """``{"success": bool | None, "done": bool}``; robots that cannot tell return None."""
        return {"success": None, "done": False}

    def close(self) -> None:  # noqa: B027  (optional hook; most robots have nothing to release)
        """Release the robot's resources."""
