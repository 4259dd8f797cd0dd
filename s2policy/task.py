"""The task a run is about: which environment, with which settings (``configs/task/*.yaml``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from envs import TASKS, EnvConfig
from s2policy.data.spec import DataSpec


@dataclass
class TaskConfig:
    """A task of ``envs/`` and the environment settings used to collect and evaluate it."""

    #: Task name, a key of ``envs.TASKS`` (``cube_pick``, ...).
    name: str = "cube_pick"
    #: Environment settings (cameras, image size, control rate, ...); see ``envs.EnvConfig``.
    env: EnvConfig = field(default_factory=EnvConfig)
    #: Episode step limit (at ``env.control_hz``); the time limit of collection and evaluation.
    max_episode_steps: int = 80

    def __post_init__(self):
        if self.name not in TASKS:
            raise ValueError(f"unknown task {self.name!r}; known: {', '.join(TASKS)}")
        if isinstance(self.env, dict):
            self.env = EnvConfig(**self.env)
        if self.max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {self.max_episode_steps}")

    @property
    def env_id(self) -> str:
        return TASKS[self.name][0]

    def spec(self) -> DataSpec:
        """What this task's environment gives a policy: its cameras at its image size, the
        state (``envs.STATE_KEYS``) and the action (5 with yaw control, else 4)."""
        from envs import STATE_KEYS

        return DataSpec(
            cameras={c: list(self.env.image_size) for c in self.env.cameras},
            state_dim=len(STATE_KEYS),
            action_dim=5 if self.env.yaw_control else 4,
            state_names=list(STATE_KEYS),
            control_hz=self.env.control_hz,
            sim_task=self.name,
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["env"] = self.env.to_dict()
        return d

    def make_env(self, max_episode_steps: int | None = None, **overrides: Any):
        """A gymnasium env of this task; ``overrides`` replace ``EnvConfig`` fields."""
        import envs

        kwargs = {**self.env.to_dict(), **overrides}
        steps = max_episode_steps or self.max_episode_steps
        return envs.make(self.name, max_episode_steps=steps, **kwargs)
