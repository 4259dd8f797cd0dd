"""1-D temporal U-Net over an action chunk, FiLM-conditioned on (diffusion step, observation).

The architecture of diffusion_policy's ``ConditionalUnet1D`` (Chi et al., 2023): residual blocks
of Conv1d + GroupNorm + Mish whose second conv is modulated per channel (scale, bias) by the
conditioning vector; a down path, a middle, and an up path with skip connections.
Shapes: ``x (B, T, A)``, ``timesteps (B,)``, ``cond (B, D_cond)`` -> ``(B, T, A)``.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn


class SinusoidalPosEmb(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=t.device) * -(math.log(10000) / (half - 1)))
        args = t.float()[:, None] * freqs[None]
        return torch.cat([args.sin(), args.cos()], dim=-1)


class Conv1dBlock(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, groups: int):
        super().__init__(
            nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2),
            nn.GroupNorm(groups, c_out),
            nn.Mish(),
        )


class ConditionalResidualBlock1D(nn.Module):
    def __init__(self, c_in: int, c_out: int, cond_dim: int, kernel: int, groups: int):
        super().__init__()
        self.block1 = Conv1dBlock(c_in, c_out, kernel, groups)
        self.block2 = Conv1dBlock(c_out, c_out, kernel, groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * c_out))  # FiLM scale, bias
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, bias = rearrange(self.film(cond), "b (two c) -> two b c 1", two=2)
        out = self.block1(x) * scale + bias
        return self.block2(out) + self.skip(x)


class ConditionalUnet1D(nn.Module):
    def __init__(
        self,
        action_dim: int,
        cond_dim: int,
        down_dims: tuple[int, ...] = (64, 128, 256),
        step_embed_dim: int = 128,
        kernel: int = 5,
        groups: int = 8,
    ):
        super().__init__()
        self.step_encoder = nn.Sequential(
            SinusoidalPosEmb(step_embed_dim),
            nn.Linear(step_embed_dim, 4 * step_embed_dim),
            nn.Mish(),
            nn.Linear(4 * step_embed_dim, step_embed_dim),
        )
        cdim = step_embed_dim + cond_dim
        dims = [action_dim, *down_dims]
        self.down = nn.ModuleList()
        for i, (c_in, c_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            last = i == len(down_dims) - 1
            self.down.append(
                nn.ModuleList(
                    [
                        ConditionalResidualBlock1D(c_in, c_out, cdim, kernel, groups),
                        ConditionalResidualBlock1D(c_out, c_out, cdim, kernel, groups),
                        nn.Conv1d(c_out, c_out, 3, 2, 1) if not last else nn.Identity(),
                    ]
                )
            )
        mid = down_dims[-1]
        self.mid = nn.ModuleList(
            [ConditionalResidualBlock1D(mid, mid, cdim, kernel, groups) for _ in range(2)]
        )
        self.up = nn.ModuleList()
        rev = list(reversed(down_dims))
        for c_out, c_in in zip(rev[1:], rev[:-1], strict=True):
            self.up.append(
                nn.ModuleList(
                    [
                        ConditionalResidualBlock1D(2 * c_in, c_out, cdim, kernel, groups),
                        ConditionalResidualBlock1D(c_out, c_out, cdim, kernel, groups),
                        nn.ConvTranspose1d(c_out, c_out, 4, 2, 1),
                    ]
                )
            )
        self.final = nn.Sequential(
            Conv1dBlock(down_dims[0], down_dims[0], kernel, groups),
            nn.Conv1d(down_dims[0], action_dim, 1),
        )
        self.n_down = len(down_dims) - 1

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if x.shape[1] % (2**self.n_down):
            raise ValueError(f"horizon {x.shape[1]} must be divisible by {2**self.n_down}")
        cond = torch.cat([self.step_encoder(timesteps), cond], dim=-1)
        h = rearrange(x, "b t a -> b a t")
        skips = []
        for res1, res2, downsample in self.down:
            h = res2(res1(h, cond), cond)
            skips.append(h)
            h = downsample(h)
        for block in self.mid:
            h = block(h, cond)
        for res1, res2, upsample in self.up:
            h = torch.cat([h, skips.pop()], dim=1)
            h = upsample(res2(res1(h, cond), cond))
        return rearrange(self.final(h), "b a t -> b t a")
