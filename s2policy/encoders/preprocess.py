"""Camera frames to encoder inputs. Normalization (mean/std from the backbone's pretrained
config) and resizing happen inside :class:`s2policy.encoders.s2.S2Encoder`, so the cache and
live evaluation cannot preprocess differently."""

from __future__ import annotations

import numpy as np
import torch


def frames_to_tensor(
    frames: np.ndarray | torch.Tensor, device: torch.device | str = "cpu", pin_memory: bool = False
) -> torch.Tensor:
    """uint8 frames ``(B, H, W, 3)`` -> float32 ``(B, 3, H, W)`` in [0, 1] on ``device``."""
    x = torch.as_tensor(np.asarray(frames)) if not isinstance(frames, torch.Tensor) else frames
    if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8 (B, H, W, 3), got {x.dtype} {tuple(x.shape)}")
    if pin_memory and torch.cuda.is_available():
        x = x.pin_memory()
    x = x.to(device, non_blocking=pin_memory)
    return x.permute(0, 3, 1, 2).float().div_(255.0)
