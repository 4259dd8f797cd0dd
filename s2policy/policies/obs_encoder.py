"""Observation head shared by every policy: cached features per camera + state -> one vector.

Pooled features ``(C,)`` are projected by LayerNorm + Linear to ``d_feature``; token maps
``(P + h*w, C)`` (``P`` prefix tokens, then an ``h x w`` grid in row-major order) are reduced by
the ``spatial_head``: ``attention`` (a learnable-query attention pooling over all tokens) or
``softmax`` (robomimic's SpatialSoftmax keypoints on the grid, plus the prefix tokens). The
per-camera vectors and the (normalized) state of each of the ``n_obs_steps`` steps are
concatenated: ``(B, n_obs_steps, ...) -> (B, n_obs_steps * (n_cameras * d_feature + S))``.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

#: The heads that reduce a token map (``policy.spatial_head``).
SPATIAL_HEADS = ("attention", "softmax")


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


class SpatialSoftmax(nn.Module):
    """``(B, P + h*w, C) -> (B, d)``: robomimic's SpatialSoftmax on the token grid.

    A per-token linear map (a 1x1 convolution) gives ``keypoints`` score maps over the ``h x w``
    grid; a softmax with a learnable temperature turns each into a distribution whose expected
    ``(x, y)`` in [-1, 1] is one keypoint. The ``2 * keypoints`` coordinates and the ``P``
    prefix tokens (e.g. the class token) are projected together to ``d``.
    """

    def __init__(self, in_dim: int, layout: tuple[int, int, int], d: int, keypoints: int):
        super().__init__()
        self.prefix, rows, cols = (int(x) for x in layout)
        self.norm = nn.LayerNorm(in_dim)
        self.score = nn.Linear(in_dim, keypoints)
        self.log_temperature = nn.Parameter(torch.zeros(()))
        ys, xs = torch.meshgrid(
            torch.linspace(-1, 1, rows), torch.linspace(-1, 1, cols), indexing="ij"
        )
        # (h*w, 2) in the grid's row-major token order; rebuilt, not saved
        self.register_buffer("coords", torch.stack([xs, ys], -1).flatten(0, 1), persistent=False)
        self.out = nn.Sequential(
            nn.Linear(2 * keypoints + self.prefix * in_dim, d), nn.LayerNorm(d)
        )

    def keypoints(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, P + h*w, C) -> (B, keypoints, 2)``: expected grid coordinates."""
        scores = self.score(self.norm(tokens[:, self.prefix :]))  # (B, h*w, K)
        attention = torch.softmax(scores / self.log_temperature.exp(), dim=1)
        return torch.einsum("bnk,nd->bkd", attention, self.coords.to(attention.dtype))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        parts = [self.keypoints(tokens).flatten(1)]
        if self.prefix:
            parts.append(self.norm(tokens[:, : self.prefix]).flatten(1))
        return self.out(torch.cat(parts, dim=-1))


def token_head(
    cam: str,
    shape: tuple[int, int],
    head: str,
    d: int,
    pool_heads: int,
    keypoints: int,
    layout: tuple[int, int, int] | None,
) -> nn.Module:
    """The module that reduces camera ``cam``'s token map of ``shape`` to ``(d,)``."""
    if head == "attention":
        return AttentionPool(shape[1], d, pool_heads)
    if head != "softmax":
        raise ValueError(f"unknown spatial_head {head!r}; known: {', '.join(SPATIAL_HEADS)}")
    if layout is None:
        raise ValueError(
            f"spatial_head=softmax needs the token grid of {cam!r} (prefix tokens, rows, cols), "
            "which the training run records from its encoder; use spatial_head=attention"
        )
    prefix, rows, cols = layout
    if prefix + rows * cols != shape[0]:
        raise ValueError(
            f"{cam!r} has {shape[0]} tokens, not {prefix} prefix + {rows} x {cols} grid tokens"
        )
    return SpatialSoftmax(shape[1], layout, d, keypoints)


class ObsEncoder(nn.Module):
    """See the module docstring. ``feature_shapes`` maps camera -> ``(C,)`` or ``(N, C)``;
    ``token_layouts`` maps a camera with token maps to ``(prefix tokens, rows, cols)`` (needed by
    ``spatial_head="softmax"``)."""

    def __init__(
        self,
        feature_shapes: dict[str, tuple[int, ...]],
        state_dim: int,
        n_obs_steps: int,
        d_feature: int = 128,
        pool_heads: int = 4,
        spatial_head: str = "attention",
        keypoints: int = 32,
        token_layouts: dict[str, tuple[int, int, int]] | None = None,
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
                layout = (token_layouts or {}).get(cam)
                self.heads[cam] = token_head(
                    cam, shape, spatial_head, d_feature, pool_heads, keypoints, layout
                )
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
