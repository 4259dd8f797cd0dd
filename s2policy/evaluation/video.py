"""Episode videos: frames upscaled for viewing, a caption, and a success/failure border."""

from __future__ import annotations

from pathlib import Path

import imageio.v2 as imageio
import numpy as np
from PIL import Image, ImageDraw

GREEN, RED, WHITE = (40, 200, 70), (220, 50, 40), (255, 255, 255)


def overlay(
    frame: np.ndarray, text: str, color: tuple[int, int, int] | None, scale: int
) -> np.ndarray:
    """Upscale ``frame (H, W, 3)`` by ``scale`` (nearest), caption it, and frame it in ``color``."""
    big = frame.repeat(scale, axis=0).repeat(scale, axis=1)
    img = Image.fromarray(big)
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, img.width, 14], fill=(0, 0, 0))
    draw.text((3, 1), text, fill=WHITE)
    if color is not None:
        draw.rectangle([0, 0, img.width - 1, img.height - 1], outline=color, width=4)
    return np.asarray(img)


def write_episode_video(
    path: str | Path, frames: list[np.ndarray], success: bool, seed: int, fps: float
) -> Path:
    """mp4 of one episode: each frame captioned with seed and step; the last second repeats the
    final frame framed in green (success) or red (failure)."""
    path = Path(path)
    scale = max(1, int(np.ceil(256 / max(frames[0].shape[:2]))))
    out = [overlay(f, f"seed {seed}  step {t}", None, scale) for t, f in enumerate(frames)]
    verdict = "SUCCESS" if success else "FAILURE"
    last = overlay(frames[-1], f"seed {seed}  {verdict}", GREEN if success else RED, scale)
    out += [last] * max(1, int(round(fps)))
    h, w = (d - d % 16 for d in out[0].shape[:2])  # codec-friendly size
    imageio.mimwrite(
        path, [f[:h, :w] for f in out], fps=fps, codec="libx264", quality=7, macro_block_size=16
    )
    return path
