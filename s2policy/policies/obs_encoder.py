"""Observation head shared by every policy: cached features per camera + state -> one vector.

Pooled features ``(C,)`` are projected by LayerNorm + Linear to ``d_feature``; token maps
``(N, C)`` are projected per token and reduced by a learnable-query attention pooling. The
per-camera vectors and the (normalized) state of each of the ``n_obs_steps`` steps are
concatenated: ``(B, n_obs_steps, ...) -> (B, n_obs_steps * (n_cameras * d_feature + S))``.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn


class AttentionPool(nn.Module):
    """``(B, N, C) -> (B, d)``: one learnable query attends over the projected tokens."""

    def __init__(self, in_dim: int, d: int, heads: int):
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, d))
        self.query = nn.Parameter(torch.randn(1, 1, d) * d**-0.5)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.norm = nn.LayerNorm(d)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.proj(tokens)
        out, _ = self.attn(self.query.expand(len(x), -1, -1), x, x, need_weights=False)
        return self.norm(out[:, 0])


class ObsEncoder(nn.Module):
    """See the module docstring. ``feature_shapes`` maps camera -> ``(C,)`` or ``(N, C)``."""

    def __init__(
        self,
        feature_shapes: dict[str, tuple[int, ...]],
        state_dim: int,
        n_obs_steps: int,
        d_feature: int = 128,
        pool_heads: int = 4,
    ):
        super().__init__()
        self.cameras = sorted(feature_shapes)
        self.heads = nn.ModuleDict()
        for cam in self.cameras:
            shape = tuple(feature_shapes[cam])
            if len(shape) == 1:
                self.heads[cam] = nn.Sequential(
                    nn.LayerNorm(shape[0]), nn.Linear(shape[0], d_feature)
                )
            elif len(shape) == 2:
                self.heads[cam] = AttentionPool(shape[1], d_feature, pool_heads)
            else:
                raise ValueError(f"features of {cam!r} must be (C,) or (N, C), got {shape}")
        self.n_obs_steps = n_obs_steps
        self.step_dim = len(self.cameras) * d_feature + state_dim
        self.out_dim = n_obs_steps * self.step_dim

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """``obs[cam]``: ``(B, T_obs, *feature_shape)``; ``obs["state"]``: ``(B, T_obs, S)``."""
        batch = obs["state"].shape[0]
        parts = []
        for cam in self.cameras:
            x = obs[cam].flatten(0, 1).float()  # (B*T, ...)
            parts.append(rearrange(self.heads[cam](x), "(b t) d -> b t d", b=batch))
        parts.append(obs["state"].float())
        return torch.cat(parts, dim=-1).flatten(1)
