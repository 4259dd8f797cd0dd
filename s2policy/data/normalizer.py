"""Per-key affine normalization fitted on the training split; it travels inside checkpoints.

``limits`` maps each dimension's [min, max] to [-1, 1] (actions: diffusion samples are clipped
there); ``gaussian`` standardizes to zero mean and unit variance (state, optionally features);
``identity`` leaves values as they are. Constant dimensions get scale 1.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

MODES = ("limits", "gaussian", "identity")
EPS = 1e-6


class Normalizer(nn.Module):
    """``x_norm = x * scale + offset`` per key; statistics over every axis but the last."""

    def __init__(self):
        super().__init__()
        self.params = nn.ParameterDict()
        self.modes: dict[str, str] = {}

    def fit(self, key: str, data: torch.Tensor, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"normalizer mode must be one of {MODES}, got {mode!r}")
        flat = data.detach().float().reshape(-1, data.shape[-1])
        if not torch.isfinite(flat).all():
            raise ValueError(f"cannot fit the normalizer of {key!r}: data contains NaN or inf")
        if mode == "limits":
            lo, hi = flat.min(0).values, flat.max(0).values
            rng = hi - lo
            scale = torch.where(rng > EPS, 2.0 / rng.clamp_min(EPS), torch.ones_like(rng))
            offset = torch.where(rng > EPS, -1.0 - lo * scale, -lo)
        elif mode == "gaussian":
            mean, std = flat.mean(0), flat.std(0, unbiased=False)
            scale = torch.where(std > EPS, 1.0 / std.clamp_min(EPS), torch.ones_like(std))
            offset = -mean * scale
        else:
            scale, offset = torch.ones(flat.shape[-1]), torch.zeros(flat.shape[-1])
        self._set(key, scale, offset, mode)

    def _set(self, key: str, scale: torch.Tensor, offset: torch.Tensor, mode: str) -> None:
        self.params[key] = nn.ParameterDict(
            {
                "scale": nn.Parameter(scale.float(), requires_grad=False),
                "offset": nn.Parameter(offset.float(), requires_grad=False),
            }
        )
        self.modes[key] = mode

    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        p = self.params[key]
        return x * p["scale"].to(x.dtype) + p["offset"].to(x.dtype)

    def unnormalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        p = self.params[key]
        return (x - p["offset"].to(x.dtype)) / p["scale"].to(x.dtype)

    def __contains__(self, key: str) -> bool:
        return key in self.params

    def state(self) -> dict[str, Any]:
        """JSON-able statistics (stored in ``policy.json``)."""
        return {
            k: {"mode": self.modes[k], "scale": p["scale"].tolist(), "offset": p["offset"].tolist()}
            for k, p in self.params.items()
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Normalizer:
        norm = cls()
        for key, s in state.items():
            norm._set(key, torch.tensor(s["scale"]), torch.tensor(s["offset"]), s["mode"])
        return norm
