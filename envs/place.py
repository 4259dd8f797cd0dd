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
    goal_marker = "target"
    expert = PlaceExpert

    def _reset_task(self, rng: np.random.Generator) -> None:
        cube, target = sample_apart(rng, 2, SPAWN_LOW, SPAWN_HIGH, MIN_DISTANCE_M)
        self.place_object("cube", cube, rng.uniform(-np.pi, np.pi))
        self.set_goal_marker(target)

    def _success(self) -> bool:
        placed = self.object_at("cube", self.goal_pos(), TOLERANCE_M, 0.005)
        return bool(placed and not self.fingers_touch("cube"))
