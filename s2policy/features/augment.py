"""Image augmentation that survives feature caching: K augmented views of every frame.

A frozen encoder's features are cached once, so the per-batch image augmentation of end-to-end
training (DrQ's random shift, diffusion_policy's random crop, colour jitter) cannot be applied
while training on them. Instead the cache stores, beside each camera's plain features, the
features of ``views`` augmented copies of every frame (arrays ``<camera>@aug<k>``); training draws
one of the ``views + 1`` versions per sample, and live evaluation sees the plain view. The
augmentation spec is part of the cache's fingerprint, so another spec is another cache.

Each augmented frame is a random shift (replicate-pad by ``shift_px``, random crop back to the
original size: DrQ) and a colour jitter (brightness and contrast factors in ``1 +- brightness``,
``1 +- contrast``, a per-channel gain in ``1 +- hue``), drawn from a generator seeded by
``(seed, view, step)`` alone: a resumed or distributed build writes the same features.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: ``<camera>@aug<k>``: the cache array of view ``k`` of ``camera``.
VIEW_SEP = "@aug"


@dataclass
class AugmentConfig:
    """``train.augment`` / the cache command's ``augment``: augmented views cached per frame."""

    #: Augmented views per frame (0: none, the plain features only).
    views: int = 0
    #: Random shift: pixels of replicate padding on each side before a random crop back.
    shift_px: int = 4
    #: Brightness factor in ``1 +- brightness``.
    brightness: float = 0.2
    #: Contrast factor (around the frame's mean) in ``1 +- contrast``.
    contrast: float = 0.2
    #: Per-channel gain in ``1 +- hue`` (a mild colour shift).
    hue: float = 0.05
    #: Seed of the augmentation draws.
    seed: int = 0

    def __post_init__(self):
        if self.views < 0 or self.shift_px < 0:
            raise ValueError(
                f"augment.views and augment.shift_px must be >= 0, got {self.views}, "
                f"{self.shift_px}"
            )
        if self.seed < 0:
            raise ValueError(f"augment.seed must be >= 0, got {self.seed}")
        for name in ("brightness", "contrast", "hue"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"augment.{name} must be in [0, 1), got {getattr(self, name)}")

    @property
    def enabled(self) -> bool:
        return self.views > 0

    def spec(self) -> dict[str, Any] | None:
        """What enters the cache fingerprint (``None`` without views: plain caches keep theirs)."""
        return dataclasses.asdict(self) if self.enabled else None


def view_name(camera: str, view: int) -> str:
    return f"{camera}{VIEW_SEP}{view}"


def split_view(array: str) -> tuple[str, int | None]:
    """``"front@aug2"`` -> ``("front", 2)``; ``"front"`` -> ``("front", None)``."""
    camera, sep, view = array.rpartition(VIEW_SEP)
    if not sep or not view.isdigit():
        return array, None
    return camera, int(view)


def view_arrays(cameras: list[str], views: int) -> list[str]:
    """Every cache array of ``cameras`` with ``views`` augmented views: plain ones first."""
    return list(cameras) + [view_name(c, k) for k in range(views) for c in cameras]


def augment_frames(
    frames: np.ndarray, cfg: AugmentConfig, view: int, steps: Sequence[int]
) -> np.ndarray:
    """Augmented copy (view ``view``) of uint8 frames ``(T, H, W, 3)`` that are the store's steps
    ``steps`` (``T`` indices): each frame's draw depends on its step, not on its neighbours."""
    frames = np.asarray(frames)
    n, height, width = frames.shape[:3]
    if len(steps) != n:
        raise ValueError(f"{n} frames but {len(steps)} step indices")
    out = np.empty_like(frames)
    pad = cfg.shift_px
    padded = (
        np.pad(frames, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge") if pad else frames
    )
    for t in range(n):
        rng = np.random.default_rng([cfg.seed, view, int(steps[t])])
        dy, dx = rng.integers(0, 2 * pad + 1, size=2) if pad else (0, 0)
        image = padded[t, dy : dy + height, dx : dx + width].astype(np.float32)
        gain = 1.0 + rng.uniform(-cfg.brightness, cfg.brightness)
        contrast = 1.0 + rng.uniform(-cfg.contrast, cfg.contrast)
        channel = 1.0 + rng.uniform(-cfg.hue, cfg.hue, size=3)
        mean = image.mean()
        image = ((image - mean) * contrast + mean) * gain * channel
        out[t] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return out
