"""Training data on cached features: every array of a store in memory as tensors, plus window
index tables per split, so a batch is one gather (no per-sample Python, no DataLoader).

A cache with augmented views (:mod:`s2policy.features.augment`) holds ``V`` more versions of
every camera's features; each training sample draws one of the ``V + 1`` versions (the same for
all cameras and observation steps of that sample), validation reads the plain one."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from s2policy.data.sampler import episode_windows, split_episodes
from s2policy.data.store import ReplayBuffer, check_finite
from s2policy.features.augment import view_name
from s2policy.features.cache import CacheInfo

logger = logging.getLogger(__name__)
LOWDIM_KEYS = ("state", "action")


@dataclass
class WindowSpec:
    n_obs_steps: int
    horizon: int
    n_action_steps: int


class CachedFeatureData:
    """Windows of (features per camera, state) observations and action chunks.

    Args:
        store: the ReplayBuffer store.
        cache: the complete feature cache to read (``None`` with ``cameras=[]``: blind policy).
        cameras: cameras whose features are observed.
        windows: observation/action window sizes.
        val_ratio, seed: episode split.
        n_episodes: use the store's first ``n_episodes`` episodes only (None: all).
        device: where the tensors live (GPU memory for fast training when it fits).
        extra: more per-step feature arrays ``(T, D)`` observed like cameras' features (the
            oracle's privileged state).
    """

    def __init__(
        self,
        store: str,
        cache: CacheInfo | None,
        cameras: list[str],
        windows: WindowSpec,
        val_ratio: float = 0.1,
        seed: int = 0,
        device: torch.device | str = "cpu",
        extra: dict[str, np.ndarray] | None = None,
        n_episodes: int | None = None,
    ):
        buffer = ReplayBuffer.open(store)
        if buffer.n_episodes == 0:
            raise ValueError(f"{store} holds no episodes")
        if n_episodes is not None and n_episodes > buffer.n_episodes:
            raise ValueError(
                f"train.n_demos={n_episodes} but {store} holds {buffer.n_episodes} episodes; "
                "collect more (collect_demos.py n_episodes=...) or lower n_demos"
            )
        #: The episodes windows are drawn from (the store's first ones).
        self.n_episodes = n_episodes or buffer.n_episodes
        self.cameras = list(cameras)
        self.windows = windows
        self.device = torch.device(device)
        self.arrays: dict[str, torch.Tensor] = {}
        #: Per camera with augmented views: ``(V + 1, T, ...)``, the plain features first.
        self.versions: dict[str, torch.Tensor] = {}
        self.n_views = cache.views if cache is not None and self.cameras else 0
        for key in LOWDIM_KEYS:
            if key not in buffer.keys():
                raise ValueError(f"{store} has no {key!r} array; keys: {buffer.keys()}")
            values = np.asarray(buffer[key][:], dtype=np.float32)
            check_finite(repr(key), values, "; fix or drop those episodes before training")
            self.arrays[key] = torch.from_numpy(values).to(self.device)
        if self.cameras and cache is None:
            raise ValueError("cameras were requested but no feature cache was given")
        for cam in self.cameras:
            if cam not in cache.attrs["cameras"]:
                raise ValueError(
                    f"camera {cam!r} is not in feature cache {cache.fingerprint} (cameras: "
                    f"{cache.attrs['cameras']}; store cameras: {buffer.attrs.get('cameras')})"
                )
            names = [cam] + [view_name(cam, k) for k in range(self.n_views)]
            versions = []
            for name in names:
                feats = cache.features(name)[:]  # float16 (T, *shape), kept in half precision
                check_finite(
                    f"features/{name}",
                    feats.reshape(len(feats), -1),
                    "; remove and rebuild the cache",
                )
                versions.append(torch.from_numpy(feats))
            if self.n_views:
                self.versions[cam] = torch.stack(versions).to(self.device)
                self.arrays[cam] = self.versions[cam][0]
            else:
                self.arrays[cam] = versions[0].to(self.device)
        for key, values in (extra or {}).items():
            if len(values) != buffer.n_steps:
                raise ValueError(f"{key!r} has {len(values)} steps, {store} {buffer.n_steps}")
            check_finite(repr(key), values, "; fix or drop those episodes before training")
            self.arrays[key] = torch.from_numpy(np.asarray(values, np.float32)).to(self.device)
            self.cameras.append(key)
        self.train_episodes, self.val_episodes = split_episodes(self.n_episodes, val_ratio, seed)
        ends = buffer.episode_ends
        self.index = {
            split: torch.from_numpy(
                episode_windows(ends, eps, windows.horizon, windows.n_obs_steps)
            )
            for split, eps in (("train", self.train_episodes), ("val", self.val_episodes))
        }
        # every step is the current step of exactly one window
        self.train_steps = self.index["train"][:, windows.n_obs_steps - 1]

    @property
    def shape_meta(self) -> dict[str, Any]:
        return {
            "features": {c: list(self.arrays[c].shape[1:]) for c in self.cameras},
            "state": list(self.arrays["state"].shape[1:]),
            "action": list(self.arrays["action"].shape[1:]),
        }

    def fit_data(self, key: str) -> torch.Tensor:
        """Values of ``key`` at the training-split steps (for the normalizer)."""
        return self.arrays[key][self.train_steps.to(self.device)].float()

    def __len__(self) -> int:
        return len(self.index["train"])

    def n_windows(self, split: str) -> int:
        return len(self.index[split])

    def batch(
        self, split: str, rows: torch.Tensor, views: torch.Tensor | None = None
    ) -> dict[str, Any]:
        """Windows ``rows`` of ``split`` -> ``{"obs": {cam/state: (B, T_obs, ...)},
        "action": (B, horizon, A)}``; ``views`` ``(B,)``: which version of the features each
        sample reads (0: plain; only for a cache with augmented views)."""
        win = self.index[split][rows].to(self.device)  # (B, horizon) global step indices
        obs_idx = win[:, : self.windows.n_obs_steps]
        obs = {}
        for cam in self.cameras:
            if views is not None and cam in self.versions:
                obs[cam] = self.versions[cam][views.to(self.device)[:, None], obs_idx]
            else:
                obs[cam] = self.arrays[cam][obs_idx]
        obs["state"] = self.arrays["state"][obs_idx]
        return {"obs": obs, "action": self.arrays["action"][win]}

    def sample(self, batch_size: int, generator: torch.Generator) -> dict[str, Any]:
        rows = torch.randint(0, len(self), (batch_size,), generator=generator)
        views = None
        if self.n_views:  # drawn only then: runs without views keep their random stream
            views = torch.randint(0, self.n_views + 1, (batch_size,), generator=generator)
        return self.batch("train", rows, views)

    def iterate(self, split: str, batch_size: int):
        for start in range(0, self.n_windows(split), batch_size):
            yield self.batch(
                split, torch.arange(start, min(start + batch_size, self.n_windows(split)))
            )
