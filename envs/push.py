"""Push: slide the cube into a goal circle without lifting it."""

from __future__ import annotations

import numpy as np

from envs.base import SPAWN_HIGH, SPAWN_LOW, ManipulationEnv
from envs.expert import PushExpert

TOLERANCE_M = 0.03  # cube centre to goal centre (the goal circle has a 4 cm radius)
DISTANCE_M = (0.08, 0.15)  # start distance between cube and goal
LIFT_LIMIT_M = 0.01  # lifting the cube more than this during the episode forfeits success


class PushEnv(ManipulationEnv):
    """``s2policy/Push-v0``; ``info`` holds the cube's state and ``goal_pos``; success = cube
    centre within 3 cm of the goal's centre, on the table, not held, and never lifted more than
    1 cm during the episode."""

    xml = "push.xml"
    objects = ("cube",)
    goal_marker = "goal"
    expert = PushExpert
    max_lift = 0.0  # highest lift of the cube (m) in this episode

    def _reset_task(self, rng: np.random.Generator) -> None:
        cube = rng.uniform(SPAWN_LOW, SPAWN_HIGH)
        while True:  # a goal inside the spawn area, at a random distance and direction
            angle = rng.uniform(-np.pi, np.pi)
            goal = cube + rng.uniform(*DISTANCE_M) * np.array([np.cos(angle), np.sin(angle)])
            if (SPAWN_LOW <= goal).all() and (goal <= SPAWN_HIGH).all():
                break
        self.place_object("cube", cube, rng.uniform(-np.pi, np.pi))
        self.set_goal_marker(goal)
        self.max_lift = 0.0

    def _after_step(self) -> None:
        lift = self.object_pose("cube")[0][2] - self.half_size("cube")[2]
        self.max_lift = max(self.max_lift, float(lift))

    def _success(self) -> bool:
        inside = self.object_at("cube", self.goal_pos(), TOLERANCE_M, 0.005)
        untouched = self.max_lift <= LIFT_LIMIT_M and not self.fingers_touch("cube")
        return bool(inside and untouched)
