"""One training loop for every policy, on cached features (CPU or GPU, bf16 autocast, DDP)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel
from torch.nn.parallel import DistributedDataParallel

from envs import EnvConfig
from s2policy.data.normalizer import Normalizer
from s2policy.encoders.s2 import build_encoder
from s2policy.features.cache import CacheInfo, build_cache, open_cache
from s2policy.policies import make_policy
from s2policy.policies.artifact import EncoderInfo, Provenance, load_training_state, save
from s2policy.runtime import autocast, init_distributed, resolve_device, resolve_dtype
from s2policy.task import TaskConfig
from s2policy.training.config import RunConfig
from s2policy.training.dataset import CachedFeatureData, WindowSpec

logger = logging.getLogger(__name__)


def dataset_task(cfg: RunConfig, attrs: dict[str, Any]) -> TaskConfig:
    """The task as the demonstrations were collected (image size, cameras, randomization, ...):
    evaluation must see what the data shows, whatever ``task.env`` the run config says."""
    name = attrs.get("task")
    if name is None or "env" not in attrs:  # e.g. an imported store: trust the config
        logger.warning(
            "%s does not record its task settings; using task=%s", cfg.dataset, cfg.task.name
        )
        return cfg.task
    if name != cfg.task.name:
        raise ValueError(
            f"{cfg.dataset} holds demonstrations of task {name!r}, but the run is for task "
            f"{cfg.task.name!r}; pass task={name} or dataset=<a {cfg.task.name} store>"
        )
    return TaskConfig(name, EnvConfig(**attrs["env"]), cfg.task.max_episode_steps)


def resolve_cameras(cfg: RunConfig, task: TaskConfig, store_cameras: list[str]) -> list[str]:
    if cfg.encoder.is_blind:
        return []
    cameras = list(task.env.cameras) if cfg.policy.cameras is None else list(cfg.policy.cameras)
    if not cameras:
        raise ValueError(
            f"policy.cameras=[] leaves encoder {cfg.encoder.backbone!r} no camera; a blind "
            "(state-only) policy is encoder=blind"
        )
    missing = [c for c in cameras if c not in store_cameras]
    if missing:
        raise ValueError(
            f"the policy needs camera(s) {missing}, but {cfg.dataset} has {store_cameras}; set "
            "policy.cameras to a subset, or [] for a blind (state-only) policy"
        )
    return cameras


@dataclass
class PreparedData:
    """What a run trains on, and what its checkpoint records about it."""

    data: CachedFeatureData
    task: TaskConfig
    #: The frozen encoder (``None`` when blind) and its feature cache.
    encoder: EncoderInfo | None
    cache: CacheInfo | None
    dataset_episodes: int

    def provenance(self, cfg: RunConfig) -> Provenance:
        return Provenance(
            str(cfg.dataset),
            self.dataset_episodes,
            self.cache.fingerprint if self.cache else None,
            cfg.to_dict(),
        )


def prepare_data(cfg: RunConfig, device: torch.device, cache_dtype: str) -> PreparedData:
    """Build the feature cache when missing (through the cache module) and load the windows."""
    from s2policy.data.replay_buffer import ReplayBuffer

    store = ReplayBuffer.open(cfg.dataset)
    attrs = store.attrs
    task = dataset_task(cfg, attrs)
    cameras = resolve_cameras(cfg, task, list(attrs.get("cameras", [])))
    encoder_info, cache = None, None
    if cameras:
        encoder = build_encoder(cfg.encoder).to(device)
        if cfg.train.build_cache:
            cache = build_cache(
                cfg.dataset,
                encoder,
                cameras,
                cfg.train.cache_batch_size,
                cfg.train.cache_chunk_steps,
                cache_dtype,
            )
        else:
            cache = open_cache(cfg.dataset, encoder, cameras, cache_dtype)
        encoder_info = EncoderInfo(cfg.encoder, encoder.spec(), cache_dtype)
        del encoder
    windows = WindowSpec(cfg.policy.n_obs_steps, cfg.policy.horizon, cfg.policy.n_action_steps)
    data = CachedFeatureData(
        cfg.dataset, cache, cameras, windows, cfg.train.val_ratio, cfg.train.seed, device
    )
    return PreparedData(data, task, encoder_info, cache, store.n_episodes)


def fit_normalizer(data: CachedFeatureData, normalize_features: bool) -> Normalizer:
    norm = Normalizer()
    norm.fit("action", data.fit_data("action"), "limits")
    norm.fit("state", data.fit_data("state"), "gaussian")
    for cam in data.cameras:
        norm.fit(cam, data.fit_data(cam), "gaussian" if normalize_features else "identity")
    return norm


@dataclass
class TrainResult:
    """A finished run: its checkpoint and the feature cache it trained on (``None`` if blind)."""

    checkpoint: Path
    cache: CacheInfo | None


def train(cfg: RunConfig, on_log: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """Train ``cfg.policy`` and return the final checkpoint directory."""
    return fit(cfg, on_log).checkpoint


def fit(cfg: RunConfig, on_log: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Train ``cfg.policy``; returns the final checkpoint and the cache it was trained on."""
    rank, world = init_distributed()
    device = resolve_device(cfg.train.device)
    dtype = resolve_dtype(cfg.train.dtype, device)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.train.seed + rank)
    prepared = prepare_data(cfg, device, dtype)
    data = prepared.data
    policy = make_policy(
        cfg.policy, data.shape_meta, fit_normalizer(data, cfg.policy.normalize_features)
    )
    policy.to(device)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, cfg.train.warmup_steps, cfg.train.steps)
    ema = None
    if getattr(cfg.policy, "use_ema", False):
        ema = EMAModel(policy.parameters(), power=cfg.policy.ema_power, use_ema_warmup=True)
    data_gen = torch.Generator().manual_seed(cfg.train.seed * 7919 + rank)
    noise_gen = torch.Generator(device).manual_seed(cfg.train.seed * 104729 + rank)
    step = 0
    if cfg.train.resume and (out / "checkpoint").exists():
        weights, state = load_training_state(out)
        policy.load_state_dict(weights)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        data_gen.set_state(state["data_rng"])
        noise_gen.set_state(state["noise_rng"].to(noise_gen.get_state().device))
        torch.set_rng_state(state["torch_rng"])
        step = int(state["step"])
        logger.info("resumed %s at step %d", out, step)
    model = DistributedDataParallel(policy) if world > 1 else policy
    provenance = prepared.provenance(cfg)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1, default=str))

    def checkpoint() -> Path | None:
        if rank != 0:
            return None
        ema_state = None
        if ema is not None:
            ema.store(policy.parameters())
            ema.copy_to(policy.parameters())
            ema_state = {k: v.clone() for k, v in policy.state_dict().items()}
            ema.restore(policy.parameters())
        state = {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "data_rng": data_gen.get_state(),
            "noise_rng": noise_gen.get_state().cpu(),
            "torch_rng": torch.get_rng_state(),
            "ema": ema.state_dict() if ema else None,
        }
        return save(
            out, policy, prepared.task, prepared.encoder, provenance, step, ema_state, state
        )

    metrics = (out / "metrics.jsonl").open("a" if step else "w") if rank == 0 else None
    window_loss, window_start = [], time.perf_counter()
    try:
        while step < cfg.train.steps:
            policy.train()
            batch = data.sample(cfg.train.batch_size, data_gen)
            with autocast(device, dtype):
                loss = model(batch, generator=noise_gen)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.train.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.step(policy.parameters())
            step += 1
            window_loss.append(loss.item())
            record = None
            if step % cfg.train.log_every == 0 or step == cfg.train.steps:
                elapsed = time.perf_counter() - window_start
                record = {
                    "step": step,
                    "train_loss": float(np.mean(window_loss)),
                    "lr": scheduler.get_last_lr()[0],
                    "samples_per_s": len(window_loss) * cfg.train.batch_size * world / elapsed,
                }
                window_loss, window_start = [], time.perf_counter()
            if (step % cfg.train.val_every == 0 or step == cfg.train.steps) and data.n_windows(
                "val"
            ):
                record = {
                    **(record or {"step": step}),
                    "val_loss": validate(policy, data, cfg.train.batch_size, device, dtype),
                }
            if record is not None and rank == 0:
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()
                if on_log is not None:
                    on_log(record)
            if step % cfg.train.ckpt_every == 0 and step < cfg.train.steps:
                checkpoint()
        final = checkpoint()
    finally:
        if metrics is not None:
            metrics.close()
    if world > 1:
        torch.distributed.barrier()
    return TrainResult(final or out / "checkpoint", prepared.cache)


@torch.no_grad()
def validate(
    policy, data: CachedFeatureData, batch_size: int, device: torch.device, dtype: str
) -> float:
    """Mean loss over every validation window, with a fixed noise seed (comparable over steps)."""
    policy.eval()
    gen = torch.Generator(data.device).manual_seed(12345)
    losses, counts = [], []
    for batch in data.iterate("val", batch_size):
        with autocast(device, dtype):
            losses.append(policy(batch, generator=gen).item())
        counts.append(len(batch["action"]))
    return float(np.average(losses, weights=counts))
