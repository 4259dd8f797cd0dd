"""In-domain MAE pretraining of a registry ViT on demonstration and random-rollout frames.

Weights are saved as ``<weights_dir>/<name>.safetensors`` (the ViT's own state dict, so
``encoder.weights=<name>`` loads them) plus ``<name>.json`` (backbone, tile size, steps, loss,
frames, config). The run directory holds ``metrics.jsonl``, ``loss.png``, ``reconstruction.png``
and ``checkpoint/`` (MAE weights + optimizer state) for ``resume=true``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.optimization import get_cosine_schedule_with_warmup
from safetensors.torch import load_file, save_file

from s2policy.data.replay_buffer import ReplayBuffer
from s2policy.encoders.backbones import build_backbone
from s2policy.encoders.preprocess import frames_to_tensor
from s2policy.fileio import swap_in
from s2policy.pretraining.mae import MaskedAutoencoder, s2_tiles
from s2policy.runtime import DTYPES, resolve_device, resolve_dtype
from s2policy.task import TaskConfig

logger = logging.getLogger(__name__)


@dataclass
class PretrainConfig:
    """``configs/pretrain.yaml``."""

    #: Registry backbone to pretrain (``vit_micro``, ``vit_t``, ``vit_s``, ``vit_b``, ...).
    backbone: str = "vit_micro"
    #: Tile size the ViT sees (its ``img_size``).
    img_size: int = 64
    #: Scales (pixels) images are tiled at, S²-style; one is drawn per step. [] = ``[img_size]``.
    scales: list[int] = field(default_factory=list)
    #: ReplayBuffer stores whose camera frames are used.
    datasets: list[str] = field(default_factory=lambda: ["datasets/cube_pick.zarr"])
    #: Extra frames from random-action rollouts of ``task`` (0: none).
    random_frames: int = 0
    task: TaskConfig = field(default_factory=TaskConfig)
    mask_ratio: float = 0.75
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    norm_pix_loss: bool = True
    steps: int = 2000
    batch_size: int = 128
    lr: float = 1.5e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    log_every: int = 50
    ckpt_every: int = 500
    resume: bool = False
    #: Name of the saved weights (``encoder.weights=<name>``).
    name: str = "mae_vit_micro"
    #: Folder of project-pretrained weights; null: ``$S2POLICY_WEIGHTS_DIR`` or ``weights``.
    weights_dir: str | None = None
    output_dir: str = "outputs/pretrain/run"

    def __post_init__(self):
        self.scales = [int(s) for s in self.scales] or [self.img_size]
        if any(s % self.img_size for s in self.scales):
            raise ValueError(f"scales {self.scales} must be multiples of img_size {self.img_size}")
        if not 0 < self.mask_ratio < 1:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if min(self.steps, self.batch_size, self.log_every, self.ckpt_every) < 1:
            raise ValueError("steps, batch_size, log_every and ckpt_every must be >= 1")
        if self.random_frames < 0:
            raise ValueError("random_frames must be >= 0")


def load_frames(cfg: PretrainConfig) -> np.ndarray:
    """Every camera frame of ``cfg.datasets`` plus ``cfg.random_frames`` from random rollouts,
    uint8 ``(N, H, W, 3)`` at one common size (the first source's)."""
    frames: list[np.ndarray] = []
    for path in cfg.datasets:
        buf = ReplayBuffer.open(path)
        if buf.n_steps == 0:
            continue
        for cam in buf.attrs.get("cameras", []):
            frames.append(np.asarray(buf[cam][:]))
    if cfg.random_frames:
        frames.append(random_rollout_frames(cfg.task, cfg.random_frames, cfg.seed))
    frames = [f for f in frames if len(f)]
    if not frames:
        raise ValueError(
            "no frames to pretrain on: the datasets hold no camera frames and random_frames=0; "
            "collect demonstrations or set random_frames"
        )
    size = frames[0].shape[1:]
    odd = [f.shape[1:] for f in frames if f.shape[1:] != size]
    if odd:
        raise ValueError(f"frames of different sizes {[size, *odd]}; use sources of one size")
    return np.concatenate(frames)


def random_rollout_frames(task: TaskConfig, n: int, seed: int) -> np.ndarray:
    """``n`` frames (all cameras) of episodes driven by uniformly random actions."""
    env = task.make_env()
    rng = np.random.default_rng(seed)
    out, episode = [], 0
    obs, _ = env.reset(seed=10_000_000 + seed * 1000)
    while len(out) < n:
        out += [obs[c] for c in task.env.cameras]
        obs, _, terminated, truncated, _ = env.step(rng.uniform(-1, 1, env.action_space.shape))
        if terminated or truncated:
            episode += 1
            obs, _ = env.reset(seed=10_000_000 + seed * 1000 + episode)
    env.close()
    return np.stack(out[:n])


def pretrain(cfg: PretrainConfig, on_log: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """Pretrain and save the weights; returns the ``.safetensors`` path."""
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    frames = load_frames(cfg)
    torch.manual_seed(cfg.seed)
    vit, bcfg = build_backbone(cfg.backbone, img_size=cfg.img_size, init_seed=cfg.seed)
    vit.requires_grad_(True).train()
    mae = MaskedAutoencoder(
        vit,
        cfg.mask_ratio,
        cfg.decoder_dim,
        cfg.decoder_depth,
        cfg.decoder_heads,
        cfg.norm_pix_loss,
    ).to(device)
    mean = torch.tensor(bcfg["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(bcfg["std"], device=device).view(1, 3, 1, 1)
    opt = torch.optim.AdamW(
        mae.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95)
    )
    sched = get_cosine_schedule_with_warmup(opt, cfg.warmup_steps, cfg.steps)
    data_gen = torch.Generator().manual_seed(cfg.seed)
    mask_gen = torch.Generator(device).manual_seed(cfg.seed + 1)
    step, ckpt = 0, out / "checkpoint"
    if cfg.resume and (ckpt / "training_state.pt").is_file():
        mae.load_state_dict(load_file(str(ckpt / "mae.safetensors")))
        state = torch.load(ckpt / "training_state.pt", weights_only=True)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        data_gen.set_state(state["data_rng"])
        mask_gen.set_state(state["mask_rng"].to(mask_gen.get_state().device))
        step = int(state["step"])
        logger.info("resumed MAE pretraining at step %d", step)

    def batch() -> torch.Tensor:
        rows = torch.randint(0, len(frames), (cfg.batch_size,), generator=data_gen).numpy()
        scale = cfg.scales[int(torch.randint(0, len(cfg.scales), (1,), generator=data_gen))]
        images = (frames_to_tensor(frames[np.sort(rows)], device) - mean) / std
        tiles = s2_tiles(images, scale, cfg.img_size)
        if len(tiles) > cfg.batch_size:  # keep the step's cost fixed across scales
            pick = torch.randperm(len(tiles), generator=data_gen)[: cfg.batch_size]
            tiles = tiles[pick.to(device)]
        return tiles

    def save_state() -> None:
        tmp = out / "checkpoint.new"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_file(
            {k: v.contiguous() for k, v in mae.state_dict().items()}, str(tmp / "mae.safetensors")
        )
        torch.save(
            {
                "step": step,
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "data_rng": data_gen.get_state(),
                "mask_rng": mask_gen.get_state().cpu(),
            },
            tmp / "training_state.pt",
        )
        swap_in(tmp, ckpt)

    metrics = (out / "metrics.jsonl").open("a" if step else "w")
    autocast = dict(device_type=device.type, dtype=DTYPES[dtype], enabled=dtype != "float32")
    losses, start = [], time.perf_counter()
    try:
        while step < cfg.steps:
            images = batch()
            with torch.autocast(**autocast):
                loss, _, _ = mae(images, mask_gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(mae.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            losses.append(loss.item())
            if step % cfg.log_every == 0 or step == cfg.steps:
                elapsed = time.perf_counter() - start
                record = {
                    "step": step,
                    "loss": float(np.mean(losses)),
                    "lr": sched.get_last_lr()[0],
                    "images_per_s": len(losses) * cfg.batch_size / elapsed,
                }
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()
                losses, start = [], time.perf_counter()
                if on_log is not None:
                    on_log(record)
            if step % cfg.ckpt_every == 0 or step == cfg.steps:
                save_state()
    finally:
        metrics.close()
    return save_weights(cfg, mae, bcfg, frames, out)


def save_weights(
    cfg: PretrainConfig, mae: MaskedAutoencoder, bcfg: dict, frames: np.ndarray, out: Path
) -> Path:
    folder = Path(cfg.weights_dir or os.environ.get("S2POLICY_WEIGHTS_DIR", "weights"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{cfg.name}.safetensors"
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in mae.vit.state_dict().items()}, str(path)
    )
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    meta = {
        "backbone": cfg.backbone,
        "img_size": cfg.img_size,
        "method": "mae",
        "steps": cfg.steps,
        "final_loss": records[-1]["loss"] if records else None,
        "frames": int(len(frames)),
        "config": asdict(cfg),
        "run_dir": str(out),
    }
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1, default=str))
    plot_loss(records, out / "loss.png")
    mae.eval()
    mean = torch.tensor(bcfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(bcfg["std"]).view(1, 3, 1, 1)
    sample = frames[np.linspace(0, len(frames) - 1, 6).astype(int)]
    device = next(mae.parameters()).device
    images = (frames_to_tensor(sample, device) - mean.to(device)) / std.to(device)
    images = s2_tiles(images, cfg.img_size, cfg.img_size)
    masked, recon = mae.reconstruct(images, torch.Generator(device).manual_seed(0))
    plot_reconstruction(
        images, masked, recon, mean.to(device), std.to(device), out / "reconstruction.png"
    )
    logger.info("saved %s (%s)", path, meta["final_loss"])
    return path


def plot_loss(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=110)
    ax.plot([r["step"] for r in records], [r["loss"] for r in records])
    ax.set_xlabel("step")
    ax.set_ylabel("masked-patch loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_reconstruction(images, masked, recon, mean, std, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def show(x):
        return (x * std + mean).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()

    rows = [show(images), show(masked), show(recon)]
    n = len(rows[0])
    fig, axes = plt.subplots(3, n, figsize=(1.6 * n, 5), dpi=110)
    for r, (title, row) in enumerate(zip(("input", "masked", "reconstruction"), rows, strict=True)):
        for c in range(n):
            axes[r, c].imshow(row[c])
            axes[r, c].axis("off")
        axes[r, 0].set_title(title, fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
