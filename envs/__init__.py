"""MuJoCo manipulation tasks with the gymnasium API (``s2policy/<Task>-v0``).

Importing this package first chooses MuJoCo's headless OpenGL backend (see ``envs.rendering``),
which must happen before ``mujoco`` is imported anywhere, then registers the tasks.
"""

from envs.rendering import configure_gl_backend

configure_gl_backend(strict=False)

import gymnasium as gym  # noqa: E402

from envs.base import CAMERAS, STATE_KEYS, EnvConfig, ManipulationEnv  # noqa: E402
from envs.randomization import Randomization  # noqa: E402

#: Task name (as in ``configs/task/<name>.yaml``) -> (gymnasium id, entry point, episode limit).
TASKS = {
    "cube_pick": ("s2policy/CubePick-v0", "envs.cube_pick:CubePickEnv", 80),
    "place": ("s2policy/Place-v0", "envs.place:PlaceEnv", 100),
    "stack": ("s2policy/Stack-v0", "envs.stack:StackEnv", 100),
    "push": ("s2policy/Push-v0", "envs.push:PushEnv", 80),
}

for _id, _entry, _steps in TASKS.values():
    if _id not in gym.registry:
        gym.register(id=_id, entry_point=_entry, max_episode_steps=_steps)


def make(task: str, **kwargs) -> gym.Env:
    """``gymnasium.make`` by task name (``cube_pick``) or id; ``kwargs`` go to :class:`EnvConfig`
    (plus ``render_mode`` and ``max_episode_steps``)."""
    ids = {name: spec[0] for name, spec in TASKS.items()}
    if task in ids:
        task = ids[task]
    elif task not in ids.values():
        raise ValueError(f"unknown task {task!r}; known: {', '.join(ids)}")
    return gym.make(task, **kwargs)


__all__ = [
    "CAMERAS",
    "STATE_KEYS",
    "TASKS",
    "EnvConfig",
    "ManipulationEnv",
    "Randomization",
    "make",
]
