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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from s2policy.data.replay_buffer import ReplayBuffer
from s2policy.encoders.backbones import build_backbone
from s2policy.encoders.preprocess import frames_to_tensor
from s2policy.fileio import save_tensors
from s2policy.pretraining.mae import MaskedAutoencoder, s2_tiles
from s2policy.runtime import resolve_device, resolve_dtype
from s2policy.task import TaskConfig
from s2policy.tracking import LoggerConfig, open_tracker
from s2policy.training.trainer import STATE_FILE, Trainer, read_state

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
    #: Experiment tracking (``logger=tensorboard|wandb``; ``configs/logger/``): loss, lr and
    #: images/s into ``<output_dir>/tensorboard/`` or a W&B run.
    logger: LoggerConfig = field(default_factory=LoggerConfig)

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
    tracker = open_tracker(cfg.logger, out, cfg.name, "pretrain", "pretrain", asdict(cfg))
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
    data_gen = torch.Generator().manual_seed(cfg.seed)
    mask_gen = torch.Generator(device).manual_seed(cfg.seed + 1)
    trainer = Trainer(
        mae,
        cfg,
        out,
        device=device,
        dtype=dtype,
        samples_per_step=cfg.batch_size,
        betas=(0.9, 0.95),
        grad_clip=1.0,
        generators={"data_rng": data_gen, "mask_rng": mask_gen},
        rate_key="images_per_s",
    )
    ckpt = out / "checkpoint"
    if cfg.resume and (ckpt / STATE_FILE).is_file():
        mae.load_state_dict(load_file(str(ckpt / "mae.safetensors")))
        logger.info("resumed MAE pretraining at step %d", trainer.resume(read_state(ckpt)))

    def batch() -> torch.Tensor:
        """Frames drawn at one of ``cfg.scales``, normalized and cut into S²-style tiles."""
        rows = torch.randint(0, len(frames), (cfg.batch_size,), generator=data_gen).numpy()
        scale = cfg.scales[int(torch.randint(0, len(cfg.scales), (1,), generator=data_gen))]
        images = (frames_to_tensor(frames[np.sort(rows)], device) - mean) / std
        tiles = s2_tiles(images, scale, cfg.img_size)
        if len(tiles) > cfg.batch_size:  # keep the step's cost fixed across scales
            pick = torch.randperm(len(tiles), generator=data_gen)[: cfg.batch_size]
            tiles = tiles[pick.to(device)]
        return tiles

    def save_mae(folder: Path) -> None:
        weights = {k: v.contiguous() for k, v in mae.state_dict().items()}
        save_tensors(weights, folder / "mae.safetensors")

    with tracker:
        trainer.run(
            next_batch=batch,
            loss=lambda images: mae(images, mask_gen)[0],
            on_checkpoint=lambda: trainer.save_checkpoint(save_mae),
            on_log=tracker.chain(on_log),
        )
    return save_weights(cfg, mae, bcfg, frames, out)


def save_weights(
    cfg: PretrainConfig, mae: MaskedAutoencoder, bcfg: dict, frames: np.ndarray, out: Path
) -> Path:
    folder = Path(cfg.weights_dir or os.environ.get("S2POLICY_WEIGHTS_DIR", "weights"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{cfg.name}.safetensors"
    save_tensors({k: v.detach().cpu().contiguous() for k, v in mae.vit.state_dict().items()}, path)
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
