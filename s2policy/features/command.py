"""``cache_features.py``: build, list, verify or remove feature caches of a dataset."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from s2policy.encoders.s2 import EncoderConfig, build_encoder
from s2policy.features import cache
from s2policy.features.augment import AugmentConfig
from s2policy.runtime import init_distributed, resolve_device, resolve_dtype

logger = logging.getLogger(__name__)
ACTIONS = ("build", "list", "verify", "remove")


@dataclass
class CacheCommandConfig:
    """``configs/cache.yaml``."""

    #: ``build`` (or resume), ``list``, ``verify`` or ``remove``.
    action: str = "build"
    #: The ReplayBuffer store whose frames are encoded.
    dataset: str = "datasets/cube_pick.zarr"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    #: Cameras to encode; null: every camera of the store.
    cameras: list[str] | None = None
    batch_size: int = 64
    #: Steps per chunk: the unit of writing, resuming and splitting across ranks.
    chunk_steps: int = 256
    #: ``auto`` (GPU when present), ``cpu``, ``cuda``.
    device: str = "auto"
    #: ``auto`` (bfloat16 on GPU, float32 on CPU), ``float32``, ``bfloat16``, ``float16``.
    dtype: str = "auto"
    #: ``remove``: the fingerprint to delete (default: the encoder's cache).
    fingerprint: str | None = None
    #: ``verify``: frames per camera recomputed and compared.
    n_verify: int = 16
    #: Augmented views of every frame cached beside the plain features (``augment.views=4``).
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self):
        if self.action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}, got {self.action!r}")
        if self.batch_size < 1 or self.chunk_steps < 1 or self.n_verify < 1:
            raise ValueError("batch_size, chunk_steps and n_verify must be >= 1")


def run_cache_command(
    cfg: CacheCommandConfig, on_chunk: Callable[[int, int], None] | None = None
) -> list[str]:
    """Carry out ``cfg.action``; returns lines for the console."""
    store = Path(cfg.dataset)
    if cfg.action == "list":
        rows = []
        for c in cache.list_caches(store):
            a = c.attrs
            status = "complete" if c.complete else "INCOMPLETE"
            if not c.created:  # a build was killed while creating it
                rows.append(f"{c.fingerprint}  {status:10s} {cache.describe(c)}")
                continue
            progress = "" if c.complete else " chunks={}/{}".format(*cache.progress(c))
            rows.append(
                f"{c.fingerprint}  {status:10s} {cache.describe(c)} "
                f"cameras={a['cameras']} shape={a['feature_shape']} steps={a['n_steps']}" + progress
            )
        return rows or [f"no feature caches in {store}"]
    if cfg.action == "remove" and cfg.fingerprint:
        cache.remove_cache(store, cfg.fingerprint)
        return [f"removed cache {cfg.fingerprint} from {store}"]
    _, world = init_distributed()
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    if device.type == "cpu" and world > 1:  # share the cores between the ranks
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    encoder = build_encoder(cfg.encoder).to(device)
    if cfg.action == "build":
        info = cache.build_cache(
            store,
            encoder,
            cfg.cameras,
            cfg.batch_size,
            cfg.chunk_steps,
            dtype,
            on_chunk,
            cfg.augment,
        )
        return [
            f"cache {info.fingerprint} in {store}/features/{info.fingerprint}: "
            f"cameras {info.attrs['cameras']}, shape {info.attrs['feature_shape']}, "
            f"complete={info.complete}"
        ]
    if cfg.action == "verify":
        worst = cache.verify_cache(
            store, encoder, cfg.cameras, dtype, cfg.n_verify, augment=cfg.augment
        )
        return [f"cache verified: {cfg.n_verify} frames per camera, max |difference| {worst:.3g}"]
    fp = cache.cache_fingerprint(store, encoder, cfg.cameras, dtype, cfg.augment)
    cache.remove_cache(store, fp)
    return [f"removed cache {fp} from {store}"]
