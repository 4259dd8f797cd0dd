"""Cube picking: lift a 4 cm cube, placed at a random position and yaw, 5 cm with both fingers."""

from __future__ import annotations

import numpy as np

from envs.base import SPAWN_HIGH, SPAWN_LOW, ManipulationEnv
from envs.expert import GraspExpert

LIFT_HEIGHT = 0.05


class CubePickEnv(ManipulationEnv):
    """``s2policy/CubePick-v0``; ``info`` holds ``cube_pos (3,)``, ``cube_quat (4,)`` (w, x, y, z),
    ``cube_yaw`` and ``cube_half``; success = cube bottom >= 5 cm above the table with both
    fingers on it."""

    xml = "cube_pick.xml"
    objects = ("cube",)
    expert = GraspExpert  # hover, align yaw to a cube face, descend, close, lift

    def _reset_task(self, rng: np.random.Generator) -> None:
        self.place_object("cube", rng.uniform(SPAWN_LOW, SPAWN_HIGH), rng.uniform(-np.pi, np.pi))

    def _success(self) -> bool:
        lifted = self.object_pose("cube")[0][2] - self.half_size("cube")[2] >= LIFT_HEIGHT
        return bool(lifted and self.fingers_touch("cube"))
