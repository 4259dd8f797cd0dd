"""Cube picking: lift a 4 cm cube, placed at a random position and yaw, 5 cm with both fingers."""

from __future__ import annotations

import numpy as np

from envs.base import ManipulationEnv
from envs.expert import GraspExpert, wrap_grasp_yaw

CUBE_HALF = 0.02
#: Cube spawn area (m): a 20 cm x 20 cm square centred under the gripper's home position.
SPAWN_LOW, SPAWN_HIGH = np.array([-0.1, -0.1]), np.array([0.1, 0.1])
LIFT_HEIGHT = 0.05


class CubePickEnv(ManipulationEnv):
    """``s2policy/CubePick-v0``; ``info`` holds ``cube_pos (3,)``, ``cube_quat (4,)`` (w, x, y, z)
    and ``cube_yaw``; success = cube bottom >= 5 cm above the table with both fingers on it."""

    xml = "cube_pick.xml"

    def __init__(self, render_mode=None, **config):
        super().__init__(render_mode=render_mode, **config)
        self._cube_geom = self.model.geom("cube").id
        self._cube_qadr = self.model.joint("cube").qposadr[0]

    def _reset_task(self, rng: np.random.Generator) -> None:
        xy = rng.uniform(SPAWN_LOW, SPAWN_HIGH)
        yaw = rng.uniform(-np.pi, np.pi)
        qpos = self.data.qpos[self._cube_qadr : self._cube_qadr + 7]
        qpos[:3] = [xy[0], xy[1], CUBE_HALF]
        qpos[3:] = [np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]

    def _privileged(self) -> dict[str, np.ndarray]:
        qpos = self.data.qpos[self._cube_qadr : self._cube_qadr + 7]
        w, x, y, z = qpos[3:]
        yaw = np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
        return {
            "cube_pos": qpos[:3].astype(np.float32),
            "cube_quat": qpos[3:].astype(np.float32),
            "cube_yaw": np.float32(yaw),
        }

    def _success(self) -> bool:
        lifted = self.data.qpos[self._cube_qadr + 2] - CUBE_HALF >= LIFT_HEIGHT
        return bool(lifted and self.fingers_touch(self._cube_geom))


class CubePickExpert(GraspExpert):
    """Scripted expert: hover, align yaw to a cube face, descend, close, lift."""

    def target_object(self, info):
        return info["cube_pos"], wrap_grasp_yaw(float(info["cube_yaw"]))


CubePickEnv.expert = CubePickExpert
