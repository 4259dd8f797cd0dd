"""The frames MAE pretraining sees: every camera frame of some demonstration stores plus frames of
random-action rollouts, each tagged with its episode, and the split of whole episodes into the
training frames and the held-out frames whose masked-patch loss says when pretraining has
converged (:mod:`s2policy.pretraining.plateau`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from s2policy.data.store import ReplayBuffer
from s2policy.task import TaskConfig

if TYPE_CHECKING:
    from s2policy.pretraining.train import PretrainConfig

#: Episode ids of random rollouts start here (store episodes are numbered from 0 per store,
#: offset by the stores before them).
ROLLOUT_EPISODE_BASE = 1_000_000


@dataclass
class FrameSet:
    """uint8 frames ``(N, H, W, 3)`` at one size and each frame's episode ``(N,)`` (unique across
    the sources: a store's episode ``i`` and a rollout never share an id)."""

    images: np.ndarray
    episodes: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    def split(self, val_ratio: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """``(train, held_out)`` frame indices: ``val_ratio`` of the episodes (at least one when
        ``val_ratio > 0`` and there are two), drawn with ``seed``, are held out whole."""
        return heldout_split(self.episodes, val_ratio, seed)


def heldout_split(
    episodes: np.ndarray, val_ratio: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the frames of the kept and of the held-out episodes (disjoint, covering all)."""
    if not 0 <= val_ratio < 1:
        raise ValueError(f"val_ratio must be in [0, 1), got {val_ratio}")
    unique = np.unique(episodes)
    n_val = int(round(val_ratio * len(unique)))
    if val_ratio > 0 and len(unique) > 1:
        n_val = min(max(n_val, 1), len(unique) - 1)
    held = np.random.default_rng(seed).permutation(unique)[:n_val]
    is_held = np.isin(episodes, held)
    return np.flatnonzero(~is_held), np.flatnonzero(is_held)


def load_frames(cfg: PretrainConfig) -> FrameSet:
    """Every camera frame of ``cfg.datasets`` plus ``cfg.random_frames`` from random rollouts, at
    one common size (the first source's), with their episodes."""
    images: list[np.ndarray] = []
    episodes: list[np.ndarray] = []
    offset = 0
    for path in cfg.datasets:
        buf = ReplayBuffer.open(path)
        if buf.n_steps == 0:
            continue
        episode = np.repeat(np.arange(buf.n_episodes), buf.episode_lengths) + offset
        for cam in buf.attrs.get("cameras", []):
            images.append(np.asarray(buf[cam][:]))
            episodes.append(episode)
        offset += buf.n_episodes
    if cfg.random_frames:
        frames, episode = random_rollout_frames(cfg.task, cfg.random_frames, cfg.seed)
        images.append(frames)
        episodes.append(episode + ROLLOUT_EPISODE_BASE)
    keep = [i for i, f in enumerate(images) if len(f)]
    if not keep:
        raise ValueError(
            "no frames to pretrain on: the datasets hold no camera frames and random_frames=0; "
            "collect demonstrations or set random_frames"
        )
    size = images[keep[0]].shape[1:]
    odd = [images[i].shape[1:] for i in keep if images[i].shape[1:] != size]
    if odd:
        raise ValueError(f"frames of different sizes {[size, *odd]}; use sources of one size")
    return FrameSet(
        np.concatenate([images[i] for i in keep]),
        np.concatenate([episodes[i] for i in keep]).astype(np.int64),
    )


def random_rollout_frames(task: TaskConfig, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` frames (all cameras) of episodes driven by uniformly random actions, and each frame's
    rollout number."""
    env = task.make_env()
    rng = np.random.default_rng(seed)
    out, ids, episode = [], [], 0
    obs, _ = env.reset(seed=10_000_000 + seed * 1000)
    while len(out) < n:
        out += [obs[c] for c in task.env.cameras]
        ids += [episode] * len(task.env.cameras)
        obs, _, terminated, truncated, _ = env.step(rng.uniform(-1, 1, env.action_space.shape))
        if terminated or truncated:
            episode += 1
            obs, _ = env.reset(seed=10_000_000 + seed * 1000 + episode)
    env.close()
    return np.stack(out[:n]), np.asarray(ids[:n], np.int64)
