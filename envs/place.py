"""Place: carry the cube onto a marked target pad and let go (fine placement: 1.5 cm)."""

from __future__ import annotations

import numpy as np

from envs.base import SPAWN_HIGH, SPAWN_LOW, ManipulationEnv, sample_apart
from envs.expert import PlaceExpert

TOLERANCE_M = 0.015  # cube centre to target centre, in the table plane
MIN_DISTANCE_M = 0.1  # between the cube's start and the target


class PlaceEnv(ManipulationEnv):
    """``s2policy/Place-v0``; ``info`` holds the cube's state (as in cube pick) and ``goal_pos``,
    where the cube's centre belongs; success = cube centre within 1.5 cm of the target's centre,
    resting on the table, released."""

    xml = "place.xml"
    objects = ("cube",)
    expert = PlaceExpert

    def __init__(self, render_mode=None, **config):
        super().__init__(render_mode=render_mode, **config)
        self._marker = self.model.body("target").mocapid[0]

    def _reset_task(self, rng: np.random.Generator) -> None:
        cube, target = sample_apart(rng, 2, SPAWN_LOW, SPAWN_HIGH, MIN_DISTANCE_M)
        self.place_object("cube", cube, rng.uniform(-np.pi, np.pi))
        self.data.mocap_pos[self._marker] = [target[0], target[1], 0.0]

    def goal_pos(self) -> np.ndarray:
        return self.data.mocap_pos[self._marker] + [0.0, 0.0, self.half_size("cube")[2]]

    def _privileged(self) -> dict[str, np.ndarray]:
        return {**self.object_info("cube"), "goal_pos": self.goal_pos().astype(np.float32)}

    def _success(self) -> bool:
        placed = self.object_at("cube", self.goal_pos(), TOLERANCE_M, 0.005)
        return bool(placed and not self.fingers_touch("cube"))
