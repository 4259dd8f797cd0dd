"""Sequence windows over episodes (diffusion_policy's convention), padded at episode edges.

A sample is a window of ``horizon`` consecutive steps. Its first ``n_obs_steps`` steps are the
observations, and the policy predicts the actions of all ``horizon`` steps; at run time the
actions ``[n_obs_steps - 1, n_obs_steps - 1 + n_action_steps)`` are executed. Windows may start
up to ``n_obs_steps - 1`` steps before an episode and end ``n_action_steps - 1`` steps after it;
steps outside the episode repeat its first or last step (edge padding).
"""

from __future__ import annotations

import numpy as np


def episode_windows(
    episode_ends: np.ndarray, episodes: np.ndarray, horizon: int, pad_before: int, pad_after: int
) -> np.ndarray:
    """Global step indices ``(n_windows, horizon)`` of every window of the given episodes.

    Args:
        episode_ends: exclusive end step of every episode of the store, ``(n_episodes,)``.
        episodes: which episodes to draw windows from.
        horizon: window length; ``pad_before``/``pad_after``: steps a window may hang over
            the episode's start/end (filled with the edge step).
    """
    if horizon < 1 or pad_before < 0 or pad_after < 0:
        raise ValueError("horizon must be >= 1 and the paddings >= 0")
    pad_after = min(pad_after, horizon - 1)
    pad_before = min(pad_before, horizon - 1)
    starts_ends = np.stack([np.concatenate([[0], episode_ends[:-1]]), episode_ends], axis=1)
    windows = []
    offsets = np.arange(horizon)
    for ep in np.asarray(episodes, dtype=int):
        first, end = starts_ends[ep]
        length = end - first
        # window start s (relative to the episode) ranges so that at least one step is inside
        starts = np.arange(-pad_before, length - horizon + pad_after + 1)
        if len(starts) == 0:  # episode shorter than the unpadded window: one centred window
            starts = np.array([-pad_before])
        idx = np.clip(starts[:, None] + offsets[None, :], 0, length - 1) + first
        windows.append(idx)
    if not windows:
        return np.zeros((0, horizon), dtype=np.int64)
    return np.concatenate(windows).astype(np.int64)


def split_episodes(n_episodes: int, val_ratio: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random train/validation split of episode indices (at least one training episode)."""
    if not 0 <= val_ratio < 1:
        raise ValueError(f"val_ratio must be in [0, 1), got {val_ratio}")
    order = np.random.default_rng(seed).permutation(n_episodes)
    n_val = min(int(round(n_episodes * val_ratio)), n_episodes - 1)
    return np.sort(order[n_val:]), np.sort(order[:n_val])
