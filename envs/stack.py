"""Stack: put the red cube on top of the green base cube and let go."""

from __future__ import annotations

import numpy as np

from envs.base import SPAWN_HIGH, SPAWN_LOW, ManipulationEnv, sample_apart
from envs.expert import PlaceExpert

TOLERANCE_M = 0.015  # cube centre to base centre, in the table plane
MIN_DISTANCE_M = 0.1


class StackEnv(ManipulationEnv):
    """``s2policy/Stack-v0``; ``info`` holds both cubes' states (``cube_*``, ``base_*``) and
    ``goal_pos``, the cube's centre when sitting on the base; success = cube centre within 1.5 cm
    of the base's axis and resting on its top (within 8 mm), base on the table, cube released."""

    xml = "stack.xml"
    objects = ("cube", "base")
    expert = PlaceExpert

    def _reset_task(self, rng: np.random.Generator) -> None:
        cube, base = sample_apart(rng, 2, SPAWN_LOW, SPAWN_HIGH, MIN_DISTANCE_M)
        self.place_object("cube", cube, rng.uniform(-np.pi, np.pi))
        self.place_object("base", base, rng.uniform(-np.pi, np.pi))

    def goal_pos(self) -> np.ndarray:
        """The cube's centre when it sits on the base."""
        on_top = self.half_size("base")[2] + self.half_size("cube")[2]
        return self.object_pose("base")[0] + [0.0, 0.0, on_top]

    def _success(self) -> bool:
        stacked = self.object_at("cube", self.goal_pos(), TOLERANCE_M, 0.008)
        return bool(stacked and self.on_table("base") and not self.fingers_touch("cube"))
