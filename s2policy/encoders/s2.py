"""S² (Scaling on Scales, arXiv 2403.13043): a frozen ViT run on one image at several scales.

For each scale the image is resized (short side = scale, long side to a whole number of tiles so
the aspect ratio is kept up to half a tile), split into square tiles of the backbone's base size,
and **all tiles of all scales go through the backbone in one batched forward**. Tile token maps
are merged back into one map per scale, the maps are area-resized to a common grid (the smallest
or the largest scale's) and concatenated along channels; prefix tokens (class, registers) are
averaged over the tiles of a scale and concatenated the same way. With ``antialias=False`` and
square inputs this is exactly ``s2wrapper.forward`` of the reference code (tested).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import nn

from s2policy.encoders.backbones import build_backbone, get_spec

POOLS = ("cls", "mean", "tokens")
GRIDS = ("smallest", "largest")
SPEC_VERSION = 1


class S2Encoder(nn.Module):
    """Multi-scale wrapper of a timm ViT; see the module docstring.

    Args:
        backbone: a timm VisionTransformer built for square tiles of ``base_size`` pixels.
        backbone_cfg: the config returned by :func:`build_backbone` (preprocessing, digest).
        scales: image sizes in pixels (short side), each a multiple of ``base_size``.
        base_size: tile size; the backbone's ``img_size`` by default.
        pool: ``cls`` (class token per scale), ``mean`` (mean over the map) or ``tokens``
            (prefix tokens followed by the map's tokens, as the reference returns them).
        antialias: antialiased bicubic resizing (default) or the reference's plain bicubic.
        output_grid: common grid of the merged maps: the ``smallest`` or ``largest`` scale's.
    """

    def __init__(
        self,
        backbone: nn.Module,
        backbone_cfg: dict[str, Any],
        scales: tuple[int, ...] = (224, 448),
        base_size: int | None = None,
        pool: Literal["cls", "mean", "tokens"] = "cls",
        antialias: bool = True,
        output_grid: Literal["smallest", "largest"] = "smallest",
    ):
        super().__init__()
        base = int(base_size or backbone_cfg["img_size"])
        scales = tuple(sorted(int(s) for s in scales))
        if base != backbone_cfg["img_size"]:
            raise ValueError(
                f"base_size {base} differs from the backbone's tile size {backbone_cfg['img_size']}"
            )
        if not scales or len(set(scales)) != len(scales) or any(s % base for s in scales):
            raise ValueError(
                f"scales must be distinct multiples of the base size {base}, got {list(scales)}"
            )
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        if output_grid not in GRIDS:
            raise ValueError(f"output_grid must be one of {GRIDS}, got {output_grid!r}")
        if pool == "cls" and backbone_cfg["num_prefix_tokens"] == 0:
            raise ValueError(f"backbone {backbone_cfg['name']!r} has no class token; use pool=mean")
        self.backbone = backbone
        self.backbone_cfg = dict(backbone_cfg)
        self.scales, self.base_size, self.pool = scales, base, pool
        self.antialias, self.output_grid = bool(antialias), output_grid
        self.num_prefix_tokens = int(backbone_cfg["num_prefix_tokens"])
        self.embed_dim = int(backbone_cfg["embed_dim"])
        self.register_buffer("mean", torch.tensor(backbone_cfg["mean"]).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(backbone_cfg["std"]).view(1, 3, 1, 1), False)

    @property
    def out_dim(self) -> int:
        """Channels of the output: backbone width times the number of scales."""
        return self.embed_dim * len(self.scales)

    def tile_grid(self, height: int, width: int, scale: int) -> tuple[int, int]:
        """Tiles ``(rows, cols)`` of an ``height x width`` image at ``scale`` (short side)."""
        k = scale // self.base_size
        if height <= width:
            return k, max(1, round(k * width / height))
        return max(1, round(k * height / width)), k

    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        """Size ``(h, w)`` of the output token map for an ``height x width`` input."""
        scale = self.scales[0] if self.output_grid == "smallest" else self.scales[-1]
        rows, cols = self.tile_grid(height, width, scale)
        gh, gw = self.backbone_cfg["grid_size"]
        return rows * gh, cols * gw

    def forward_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``images (B, 3, H, W)`` in [0, 1] -> prefix ``(B, P, C)`` and map ``(B, C, h, w)``,
        ``C = embed_dim * len(scales)``."""
        self._check_input(images)
        batch, _, height, width = images.shape
        x = (images.float() - self.mean) / self.std
        grids = [self.tile_grid(height, width, s) for s in self.scales]
        tiles = []
        for rows, cols in grids:
            size = (rows * self.base_size, cols * self.base_size)
            scaled = (
                x
                if size == (height, width)
                else F.interpolate(
                    x, size=size, mode="bicubic", align_corners=False, antialias=self.antialias
                )
            )
            tiles.append(
                rearrange(scaled, "b c (nh h) (nw w) -> (b nh nw) c h w", nh=rows, nw=cols)
            )
        tokens = self.backbone.forward_features(torch.cat(tiles).to(images.dtype))
        gh, gw = self.backbone_cfg["grid_size"]
        p = self.num_prefix_tokens
        prefixes, maps = [], []
        for (rows, cols), out in zip(
            grids, tokens.split([batch * r * c for r, c in grids]), strict=True
        ):
            prefixes.append(reduce(out[:, :p], "(b n) p d -> b p d", "mean", b=batch))
            maps.append(
                rearrange(
                    out[:, p:],
                    "(b nh nw) (h w) d -> b d (nh h) (nw w)",
                    nh=rows,
                    nw=cols,
                    h=gh,
                    w=gw,
                )
            )
        target = maps[0 if self.output_grid == "smallest" else -1].shape[-2:]
        maps = [
            m
            if m.shape[-2:] == target
            else F.interpolate(m.float(), size=target, mode="area").to(m.dtype)
            for m in maps
        ]
        return torch.cat(prefixes, dim=-1), torch.cat(maps, dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images (B, 3, H, W)`` in [0, 1] -> ``(B, C)`` for ``cls``/``mean`` pooling, or
        ``(B, P + h*w, C)`` for ``tokens``."""
        prefix, fmap = self.forward_maps(images)
        if self.pool == "cls":
            return prefix[:, 0]
        if self.pool == "mean":
            return fmap.mean(dim=(2, 3))
        return torch.cat([prefix, rearrange(fmap, "b c h w -> b (h w) c")], dim=1)

    def output_shape(self, height: int, width: int) -> tuple[int, ...]:
        """Per-image output shape for an ``height x width`` input."""
        if self.pool != "tokens":
            return (self.out_dim,)
        gh, gw = self.token_grid(height, width)
        return (self.num_prefix_tokens + gh * gw, self.out_dim)

    def spec(self) -> dict[str, Any]:
        """JSON-able description that fully determines the output (it feeds cache fingerprints)."""
        return {
            "type": "s2",
            "version": SPEC_VERSION,
            "backbone": self.backbone_cfg,
            "scales": list(self.scales),
            "base_size": self.base_size,
            "pool": self.pool,
            "antialias": self.antialias,
            "output_grid": self.output_grid,
            "resize": "bicubic",
            "merge_resize": "area",
        }

    @torch.no_grad()
    def gflops_per_image(self, height: int | None = None, width: int | None = None) -> float:
        """GFLOPs (2 x multiply-adds, torch's FLOP counter) of one image at ``height x width``
        (default: the smallest scale, square)."""
        from torch.utils.flop_counter import FlopCounterMode

        height = height or self.scales[0]
        width = width or height
        param = next(self.backbone.parameters())
        images = torch.rand(1, 3, height, width, device=param.device, dtype=param.dtype)
        counter = FlopCounterMode(display=False)
        with counter:
            self(images)
        return counter.get_total_flops() / 1e9

    def _check_input(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"images must be (B, 3, H, W), got {tuple(images.shape)}; convert (B, H, W, 3) "
                "uint8 frames with s2policy.encoders.preprocess.frames_to_tensor"
            )
        if not images.is_floating_point():
            raise ValueError(f"images must be floating point in [0, 1], got {images.dtype}")


#: The backbone name of the blind (state-only) baseline: ``encoder=blind``.
BLIND = "none"
#: The backbone name of the oracle ceiling: the privileged object state (poses, goal) in place
#: of image features (``encoder=oracle``; see :mod:`s2policy.data.privileged`).
ORACLE = "oracle"


@dataclass
class EncoderConfig:
    """``configs/encoder/*.yaml``: a backbone and how S² runs it."""

    #: Backbone name from ``s2policy.encoders.backbones.BACKBONES`` (``vit_t``, ``vit_b``, ...),
    #: ``none``: no visual features (the blind, state-only floor of a sweep), or ``oracle``: the
    #: privileged object state instead of images (the ceiling).
    backbone: str = "vit_micro"
    #: Weights: null (random init), a file path, ``hub`` (local HF cache) or a pretrained name.
    #: ``{backbone}`` in it is replaced by the backbone's name (``mae4c_{backbone}``: one sweep
    #: over backbones, each with its own weights); the blind and oracle rows take none.
    weights: str | None = None
    #: Image sizes (short side, pixels); one scale is the plain single-scale encoder.
    scales: tuple[int, ...] = (64, 128)
    #: Tile size; null means the smallest scale.
    base_size: int | None = None
    #: ``cls``, ``mean`` or ``tokens``.
    pool: str = "cls"
    antialias: bool = True
    output_grid: str = "smallest"
    #: Seed of the random initialization (used when ``weights`` is null).
    init_seed: int = 0

    def __post_init__(self):
        self.scales = tuple(int(s) for s in self.scales)
        if not self.is_image:
            if self.weights is not None and "{backbone}" in self.weights:
                self.weights = None  # a sweep's per-backbone weights: none without a backbone
            return
        if self.weights is not None and "{backbone}" in self.weights:
            self.weights = self.weights.replace("{backbone}", self.backbone)
        get_spec(self.backbone)  # unknown names fail here, at config time
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"scales must be positive pixel sizes, got {list(self.scales)}")
        base = self.base_size or min(self.scales)
        if any(s % base for s in self.scales):
            raise ValueError(f"scales {list(self.scales)} must be multiples of base_size {base}")
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {self.pool!r}")
        if self.output_grid not in GRIDS:
            raise ValueError(f"output_grid must be one of {GRIDS}, got {self.output_grid!r}")

    @property
    def is_blind(self) -> bool:
        return self.backbone == BLIND

    @property
    def is_oracle(self) -> bool:
        return self.backbone == ORACLE

    @property
    def is_image(self) -> bool:
        """A real image encoder (neither the blind floor nor the oracle ceiling)."""
        return self.backbone not in (BLIND, ORACLE)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["scales"] = list(self.scales)
        return d


def build_encoder(cfg: EncoderConfig) -> S2Encoder:
    """The frozen S² encoder that ``cfg`` describes (eval mode, no gradients)."""
    if not cfg.is_image:
        raise ValueError(f"encoder backbone {cfg.backbone!r} is not an image encoder to build")
    base = cfg.base_size or min(cfg.scales)
    backbone, bcfg = build_backbone(
        cfg.backbone, cfg.weights, img_size=base, init_seed=cfg.init_seed
    )
    encoder = S2Encoder(backbone, bcfg, cfg.scales, base, cfg.pool, cfg.antialias, cfg.output_grid)
    return encoder.eval().requires_grad_(False)
