"""Demonstration collection with a task's scripted expert into a ReplayBuffer store.

Episode ``k`` of a collection is reset with seed ``seed + k`` (``k`` counts attempts, kept or not),
so a store is reproducible from its config and its ``meta/episode_seeds``. A collection that was
interrupted, or that is asked for more episodes, continues after the largest stored seed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from envs.randomization import Randomization, as_randomization
from s2policy.data.store import ReplayBuffer
from s2policy.task import TaskConfig

logger = logging.getLogger(__name__)


@dataclass
class CollectConfig:
    """``configs/collect.yaml``: what to collect, how many episodes, where to."""

    task: TaskConfig = field(default_factory=TaskConfig)
    #: Number of episodes the store holds when collection ends (existing ones count).
    n_episodes: int = 20
    #: Seed of the first episode; attempt ``k`` uses ``seed + k``.
    seed: int = 0
    #: Store path; by convention ``datasets/<task>.zarr``.
    output: str = "datasets/cube_pick.zarr"
    #: Standard deviation of the Gaussian noise on the expert's motion actions.
    expert_noise: float = 0.0
    #: Keep failed episodes too (with ``meta/episode_success`` false); default keeps successes only.
    keep_failed: bool = False
    #: Replace an existing store instead of appending to it.
    overwrite: bool = False
    #: Give up after this many attempts in one run (0: ``2 * n_episodes + 10``).
    max_attempts: int = 0
    #: Domain randomization of the collection (``randomization=train``); null: the task's own
    #: ``env.randomization`` (off unless the task config sets it).
    randomization: Randomization | None = None

    def __post_init__(self):
        self.randomization = as_randomization(self.randomization)
        if self.randomization is not None:
            self.task.env.randomization = self.randomization
        if self.n_episodes < 1:
            raise ValueError(f"n_episodes must be >= 1, got {self.n_episodes}")
        if self.expert_noise < 0:
            raise ValueError(f"expert_noise must be >= 0, got {self.expert_noise}")
        if self.max_attempts < 0:
            raise ValueError(f"max_attempts must be >= 0, got {self.max_attempts}")


@dataclass
class EpisodeResult:
    seed: int
    success: bool
    steps: int
    kept: bool
    seconds: float


def expert_version(task: TaskConfig) -> int:
    """The version of the task's scripted expert (``ScriptedExpert.version``): demonstrations of
    two versions are not appended to one store."""
    import importlib

    import gymnasium as gym

    module, _, name = gym.spec(task.env_id).entry_point.partition(":")
    return int(getattr(importlib.import_module(module), name).expert.version)


def store_attrs(task: TaskConfig) -> dict[str, Any]:
    """Root attributes identifying how a store's episodes were made (checked when appending)."""
    import envs

    return {
        "expert_version": expert_version(task),
        "task": task.name,
        "env_id": task.env_id,
        "env": task.env.to_dict(),
        "max_episode_steps": task.max_episode_steps,
        "control_hz": task.env.control_hz,
        "cameras": list(task.env.cameras),
        "image_size": list(task.env.image_size),
        "state_keys": list(envs.STATE_KEYS),
        "action_dim": 5 if task.env.yaw_control else 4,
    }


def _differences(stored: dict, wanted: dict, prefix: str = "") -> dict[str, tuple]:
    """The leaves of ``wanted`` that ``stored`` differs in, by dotted key (``env.image_size``)."""
    diff: dict[str, tuple] = {}
    for key, value in wanted.items():
        have = stored.get(key)
        if isinstance(value, dict) and isinstance(have, dict):
            diff.update(_differences(have, value, f"{prefix}{key}."))
        elif have != value:
            diff[f"{prefix}{key}"] = (have, value)
    return diff


def open_for_collection(path: Path, attrs: dict[str, Any], overwrite: bool) -> ReplayBuffer:
    """Create the store, or open it to append after checking it was made with the same task.

    A store without a committed episode (a run killed before its first one was saved) is completed
    with this run's settings; a damaged store is refused untouched (see ``ReplayBuffer.open``).
    """
    if overwrite or not path.exists() or (path.is_dir() and not any(path.iterdir())):
        try:
            return ReplayBuffer.create(path, attrs=attrs, overwrite=overwrite)
        except FileExistsError:
            if overwrite or not path.exists():
                raise
            # another collection created it after the check above: append to it
    buffer = ReplayBuffer.open(path, "a")
    if buffer.n_episodes == 0:  # nothing collected yet: nothing to mix other settings with
        buffer.update_attrs(attrs)
        return buffer
    # Stores written before experts were versioned hold version-1 demonstrations.
    stored = {"expert_version": 1, **buffer.attrs}
    diff = _differences(stored, attrs)
    if diff:
        buffer.close()
        details = "; ".join(f"{k}: store has {a!r}, config has {b!r}" for k, (a, b) in diff.items())
        raise ValueError(
            f"{path} was collected with other settings ({details}); collect into a new output "
            "path or pass overwrite=true to replace it"
        )
    return buffer


def run_episode(env, expert, seed: int) -> tuple[dict[str, np.ndarray], bool]:
    """One expert episode; returns per-step arrays (observation before each action, the action,
    the privileged object state, the MuJoCo ``sim_state``) and whether it succeeded."""
    obs, info = env.reset(seed=seed)
    expert.reset(seed=seed)
    steps: list[dict[str, Any]] = []
    success = False
    while True:
        action = expert.act(obs, info)
        privileged = {k: v for k, v in info.items() if k != "success"}
        sim_state = env.unwrapped.sim_state()
        steps.append({**obs, **privileged, "sim_state": sim_state, "action": action})
        obs, _, terminated, truncated, info = env.step(action)
        success = success or bool(info["success"])
        if terminated or truncated:
            break
    data = {k: np.stack([np.asarray(s[k]) for s in steps]) for k in steps[0]}
    return data, success


def collect_demos(
    cfg: CollectConfig, on_episode: Callable[[EpisodeResult], None] | None = None
) -> ReplayBuffer:
    """Fill ``cfg.output`` with ``cfg.n_episodes`` expert episodes and return the store (open
    read-only: the writer lock is freed when collection ends)."""
    path = Path(cfg.output)
    with open_for_collection(path, store_attrs(cfg.task), cfg.overwrite) as buffer:
        _collect(cfg, buffer, on_episode)
    return ReplayBuffer.open(path)


def _collect(
    cfg: CollectConfig, buffer: ReplayBuffer, on_episode: Callable[[EpisodeResult], None] | None
) -> None:
    path = buffer.path
    seeds = buffer.get_meta("episode_seeds") if buffer.n_episodes else np.array([], np.int64)
    next_seed = int(seeds.max()) + 1 if len(seeds) else cfg.seed
    needed = cfg.n_episodes - buffer.n_episodes
    if needed <= 0:
        logger.info("%s already holds %d episodes", path, buffer.n_episodes)
        return
    env = cfg.task.make_env()
    expert = env.unwrapped.expert(env, noise=cfg.expert_noise)
    max_attempts = cfg.max_attempts or 2 * needed + 10
    try:
        for attempt in range(max_attempts):
            if buffer.n_episodes >= cfg.n_episodes:
                break
            seed = next_seed + attempt
            start = time.perf_counter()
            data, success = run_episode(env, expert, seed)
            kept = success or cfg.keep_failed
            if kept:
                buffer.add_episode(
                    data,
                    meta={
                        "episode_seeds": np.int64(seed),
                        "episode_success": np.bool_(success),
                        "episode_expert_noise": np.float32(cfg.expert_noise),
                    },
                )
            result = EpisodeResult(
                seed, success, len(data["action"]), kept, time.perf_counter() - start
            )
            if on_episode is not None:
                on_episode(result)
    finally:
        env.close()
    if buffer.n_episodes < cfg.n_episodes:
        raise RuntimeError(
            f"the expert succeeded too rarely: {buffer.n_episodes}/{cfg.n_episodes} episodes after "
            f"{max_attempts} attempts; lower expert_noise or raise max_attempts"
        )
