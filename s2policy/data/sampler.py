"""Sequence windows over episodes, padded at episode edges by repeating the edge step.

A sample is a window of ``horizon`` consecutive steps. Its first ``n_obs_steps`` steps are the
observations; the last of them is the *current* step, and the policy predicts the actions of all
``horizon`` steps (at run time it executes ``n_action_steps`` of them from the current step on).
There is one window per step: every step of an episode is the current step of exactly one
window. Steps before the episode repeat its first step, steps after it repeat its last.

This differs from diffusion_policy, which drops the windows whose action chunk would run more
than ``n_action_steps - 1`` steps past the end: with short episodes (a cube pick takes ~13 steps
at 10 Hz) that drops the end of every episode, so the policy never learns to act there.
"""

from __future__ import annotations

import numpy as np


def episode_windows(
    episode_ends: np.ndarray, episodes: np.ndarray, horizon: int, n_obs_steps: int
) -> np.ndarray:
    """Global step indices ``(n_windows, horizon)``: one window per step of the given episodes,
    whose column ``n_obs_steps - 1`` is that step.

    Args:
        episode_ends: exclusive end step of every episode of the store, ``(n_episodes,)``.
        episodes: which episodes to draw windows from.
        horizon: window length (>= ``n_obs_steps``).
        n_obs_steps: observation steps, ending at the current step.
    """
    if not 1 <= n_obs_steps <= horizon:
        raise ValueError(f"need 1 <= n_obs_steps <= horizon, got {n_obs_steps} and {horizon}")
    starts = np.concatenate([[0], episode_ends[:-1]])
    offsets = np.arange(horizon) - (n_obs_steps - 1)  # relative to the current step
    windows = []
    for ep in np.asarray(episodes, dtype=int):
        first, end = int(starts[ep]), int(episode_ends[ep])
        current = np.arange(first, end)
        windows.append(np.clip(current[:, None] + offsets[None, :], first, end - 1))
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
