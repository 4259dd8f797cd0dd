"""Masked autoencoder (He et al., 2022) around a timm ViT from the backbone registry.

The encoder is the registry's ViT itself (so its weights load back into the encoder by name);
it sees only the visible patches (random ``1 - mask_ratio`` of them per image, plus the prefix
tokens). A small transformer decoder gets the encoded visible tokens and a shared mask token at
the masked positions (fixed 2-D sin-cos position embeddings) and predicts each masked patch's
pixels; the loss is the MSE on masked patches of per-patch-normalized pixels (``norm_pix_loss``).
Shapes: images ``(B, 3, H, W)`` normalized; ``N`` patches of ``p x p``; ``D`` encoder width.
"""

from __future__ import annotations

import torch
from einops import rearrange
from timm.models.vision_transformer import Block
from torch import nn


def sincos_2d(grid: tuple[int, int], dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding ``(gh * gw, dim)``."""
    gh, gw = grid
    y, x = torch.meshgrid(
        torch.arange(gh, dtype=torch.float32), torch.arange(gw, dtype=torch.float32), indexing="ij"
    )
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    out = [f(v.flatten()[:, None] * omega[None]) for v in (y, x) for f in (torch.sin, torch.cos)]
    emb = torch.cat(out, dim=1)
    return nn.functional.pad(emb, (0, dim - emb.shape[1]))


def random_masking(
    n_batch: int,
    n_patches: int,
    ratio: float,
    generator: torch.Generator | None,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random masks: ``ids_keep (B, n_keep)``, ``mask (B, N)`` (1 = masked) and
    ``ids_restore (B, N)`` (undoes the shuffle)."""
    n_keep = max(1, int(round(n_patches * (1 - ratio))))
    noise = torch.rand(
        n_batch,
        n_patches,
        generator=generator,
        device=generator.device if generator is not None else device,
    ).to(device)
    ids_shuffle = noise.argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    mask = torch.ones(n_batch, n_patches, device=device)
    mask[:, :n_keep] = 0
    return ids_shuffle[:, :n_keep], torch.gather(mask, 1, ids_restore), ids_restore


class MaskedAutoencoder(nn.Module):
    def __init__(
        self,
        vit: nn.Module,
        mask_ratio: float = 0.75,
        decoder_dim: int = 128,
        decoder_depth: int = 2,
        decoder_heads: int = 4,
        norm_pix_loss: bool = True,
    ):
        super().__init__()
        if not 0 < mask_ratio < 1:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        self.vit = vit
        self.mask_ratio, self.norm_pix_loss = mask_ratio, norm_pix_loss
        self.patch = vit.patch_embed.patch_size[0]
        self.grid = tuple(vit.patch_embed.grid_size)
        n, d = self.grid[0] * self.grid[1], vit.embed_dim
        self.n_patches = n
        self.n_pe_prefix = vit.pos_embed.shape[1] - n  # prefix positions inside pos_embed (0/1)
        self.decoder_embed = nn.Linear(d, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.register_buffer("decoder_pos", sincos_2d(self.grid, decoder_dim)[None], False)
        self.decoder = nn.Sequential(
            *[Block(decoder_dim, decoder_heads) for _ in range(decoder_depth)]
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch**2 * 3)

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W) -> (B, N, p*p*3)``."""
        return rearrange(images, "b c (h p) (w q) -> b (h w) (p q c)", p=self.patch, q=self.patch)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        gh, gw = self.grid
        return rearrange(
            patches,
            "b (h w) (p q c) -> b c (h p) (w q)",
            h=gh,
            w=gw,
            p=self.patch,
            q=self.patch,
            c=3,
        )

    def encode(self, images: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """Visible patches (+ prefix tokens) through the ViT -> ``(B, P + n_keep, D)``."""
        vit = self.vit
        x = vit.patch_embed(images)  # (B, N, D)
        x = x + vit.pos_embed[:, self.n_pe_prefix :]
        x = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, x.shape[-1]))
        prefix = [t.expand(len(x), -1, -1) for t in (vit.cls_token, vit.reg_token) if t is not None]
        if prefix:
            prefix = torch.cat(prefix, dim=1)
            if self.n_pe_prefix:
                prefix = prefix + nn.functional.pad(
                    vit.pos_embed[:, : self.n_pe_prefix],
                    (0, 0, 0, prefix.shape[1] - self.n_pe_prefix),
                )
            x = torch.cat([prefix, x], dim=1)
        x = vit.norm_pre(x)
        x = vit.blocks(x)
        return vit.norm(x)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None):
        """-> (loss, predicted patches ``(B, N, p*p*3)``, mask ``(B, N)``)."""
        ids_keep, mask, ids_restore = random_masking(
            len(images), self.n_patches, self.mask_ratio, generator, images.device
        )
        latent = self.encode(images, ids_keep)
        p = self.vit.num_prefix_tokens
        x = self.decoder_embed(latent[:, p:])
        masked = self.mask_token.expand(len(x), self.n_patches - x.shape[1], -1)
        x = torch.cat([x, masked], dim=1)
        x = torch.gather(x, 1, ids_restore[..., None].expand(-1, -1, x.shape[-1]))
        x = self.decoder_norm(self.decoder(x + self.decoder_pos))
        pred = self.decoder_pred(x)
        target = self.patchify(images)
        if self.norm_pix_loss:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        loss = ((pred.float() - target) ** 2).mean(-1)
        return (loss * mask).sum() / mask.sum(), pred, mask

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, generator: torch.Generator | None = None):
        """Masked input and reconstruction (visible patches pasted back), both ``(B, 3, H, W)``,
        with predictions mapped back to each patch's pixel statistics."""
        _, pred, mask = self(images, generator)
        target = self.patchify(images)
        if self.norm_pix_loss:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            pred = pred * (var + 1e-6).sqrt() + mean
        m = mask[..., None]
        return self.unpatchify(target * (1 - m)), self.unpatchify(pred * m + target * (1 - m))


def s2_tiles(images: torch.Tensor, scale: int, base: int) -> torch.Tensor:
    """Resize square ``images`` to ``scale`` and split into ``(scale // base)^2`` base tiles:
    S²-style multi-scale inputs for pretraining (larger scales = zoomed-in views)."""
    k = scale // base
    if images.shape[-1] != scale:
        images = nn.functional.interpolate(
            images, size=(scale, scale), mode="bicubic", align_corners=False, antialias=True
        )
    return rearrange(images, "b c (nh h) (nw w) -> (b nh nw) c h w", nh=k, nw=k)
