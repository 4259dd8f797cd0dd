"""In-domain MAE pretraining of a registry ViT on demonstration and random-rollout frames.

Whole episodes (``val_ratio`` of them) are held out: every ``val_every`` steps the masked-patch
loss of up to ``val_frames`` of their frames (fixed masks) is measured, and with
``stop.patience`` > 0 the run ends once that held-out loss has plateaued
(:class:`~s2policy.pretraining.plateau.StopConfig`; ``steps`` is then the budget).

Weights are saved as ``<weights_dir>/<name>.safetensors`` (the ViT's own state dict, so
``encoder.weights=<name>`` loads them) plus ``<name>.json`` (backbone, tile size, steps, epochs,
losses, the held-out curve and stop rule, wall time, frames, config) and ``<name>.loss.png``
(both curves). The run directory holds ``metrics.jsonl``, ``loss.png``, ``reconstruction.png``
and ``checkpoint/`` (MAE weights + optimizer state + the plateau's state) for ``resume=true``.
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
from safetensors.torch import load_file

from s2policy.encoders.backbones import build_backbone
from s2policy.encoders.preprocess import frames_to_tensor
from s2policy.fileio import disk_full, save_tensors
from s2policy.pretraining.frames import FrameSet, load_frames
from s2policy.pretraining.mae import MaskedAutoencoder, s2_tiles
from s2policy.pretraining.plateau import Plateau, StopConfig
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
    #: Training steps (with ``stop.patience`` > 0: the budget, ended early at a plateau).
    steps: int = 2000
    batch_size: int = 128
    lr: float = 1.5e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    #: ``cosine`` (to 0 at ``steps``) or ``constant`` after warm-up, decayed linearly after a
    #: plateau (warmup-stable-decay: the plateau is the constant rate's, not the schedule's).
    schedule: str = "cosine"
    #: Fraction of the episodes held out (never trained on) for the held-out loss.
    val_ratio: float = 0.1
    #: Measure the held-out loss every this many steps (and at the last).
    val_every: int = 250
    #: Held-out frames measured (an evenly spaced fixed subset when there are more).
    val_frames: int = 1024
    #: Ending at a plateau of the held-out loss.
    stop: StopConfig = field(default_factory=StopConfig)
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
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be cosine or constant, got {self.schedule!r}")
        if not 0 <= self.val_ratio < 1:
            raise ValueError(f"val_ratio must be in [0, 1), got {self.val_ratio}")
        if self.val_every < 1 or self.val_frames < 1:
            raise ValueError("val_every and val_frames must be >= 1")
        if self.stop.enabled and self.val_ratio == 0:
            raise ValueError("stop.patience needs held-out episodes (val_ratio > 0)")


def pretrain(cfg: PretrainConfig, on_log: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """Pretrain and save the weights; returns the ``.safetensors`` path."""
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tracker = open_tracker(cfg.logger, out, cfg.name, "pretrain", "pretrain", asdict(cfg))
    start = time.perf_counter()
    frame_set = load_frames(cfg)
    train_idx, val_idx = frame_set.split(cfg.val_ratio, cfg.seed)
    frames = frame_set.images[train_idx]
    if len(val_idx) > cfg.val_frames:  # an evenly spaced fixed subset
        val_idx = val_idx[np.linspace(0, len(val_idx) - 1, cfg.val_frames).astype(int)]
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
    plateau = Plateau(cfg.stop.patience, cfg.stop.min_rel_improvement)
    ckpt = out / "checkpoint"
    if cfg.resume and (ckpt / STATE_FILE).is_file():
        mae.load_state_dict(load_file(str(ckpt / "mae.safetensors")))
        logger.info("resumed MAE pretraining at step %d", trainer.resume(read_state(ckpt)))
        if "plateau" in trainer.extra:
            plateau.load(trainer.extra["plateau"])
    wall_before = float(trainer.extra.get("wall_s", 0.0))
    val_images = frame_set.images[val_idx]
    if cfg.stop.enabled and not len(val_images):
        raise ValueError(
            "stop.patience needs held-out frames, but val_ratio holds out no episode (a single "
            "episode?); add episodes or set stop.patience=0"
        )
    if cfg.schedule == "constant" and not len(val_images) and trainer.lr_factor.start is None:
        # no evaluation to start the budget's cooldown: it is set now (kept by a resume)
        first = cfg.steps - int(round(cfg.stop.cooldown_fraction * cfg.steps))
        trainer.lr_factor.decay(first, cfg.steps)

    def wall() -> float:
        return wall_before + time.perf_counter() - start

    def validate() -> dict[str, Any]:
        """The held-out loss; at a plateau, the cooldown (or the end) is set."""
        loss = heldout_loss(mae, val_images, cfg, mean, std)
        if trainer.end_at is None and plateau.update(loss, trainer.step):
            cooldown = int(round(cfg.stop.cooldown_fraction * trainer.step))
            cooldown = cooldown if cfg.schedule == "constant" else 0
            end = trainer.end_early(cooldown)
            trainer.extra["plateau_step"] = trainer.step
            logger.info(
                "held-out loss plateaued at step %d (best %.4f at step %d): ending at step %d",
                trainer.step, plateau.best, plateau.best_step, end,
            )  # fmt: skip
        elif trainer.end_at is not None:
            plateau.update(loss, trainer.step)  # the cooldown's points: best loss kept
        elif (
            cfg.schedule == "constant"
            and trainer.step >= (1 - cfg.stop.cooldown_fraction) * cfg.steps
        ):
            # no plateau within the budget: its last part is the cooldown (warmup-stable-decay)
            trainer.end_early(cfg.steps - trainer.step)
            trainer.extra["cooldown_step"] = trainer.step
            logger.info("no plateau by step %d: cooling down to the budget's end", trainer.step)
        trainer.extra["plateau"] = plateau.state()
        trainer.extra["wall_s"] = wall()
        return {"heldout_loss": loss}

    def checkpoint() -> Path:
        trainer.extra["wall_s"] = wall()
        return trainer.save_checkpoint(save_mae, "rerun with resume=true (the checkpoint is kept)")

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
            on_checkpoint=checkpoint,
            on_log=tracker.chain(on_log),
            validate=validate if len(val_images) else None,
            val_every=cfg.val_every,
        )
    trainer.extra["wall_s"] = wall()
    summary = {
        "steps_done": trainer.step,
        "epochs": trainer.step * cfg.batch_size / max(1, len(frames)),
        "train_frames": int(len(frames)),
        "heldout_frames": int(len(val_images)),
        "heldout_episodes": int(len(np.unique(frame_set.episodes[val_idx]))),
        "episodes": int(len(np.unique(frame_set.episodes))),
        "stop_rule": cfg.stop.rule(),
        "plateau_step": trainer.extra.get("plateau_step"),
        "cooldown_step": trainer.extra.get("plateau_step", trainer.extra.get("cooldown_step")),
        "stopped": "plateau" if trainer.extra.get("plateau_step") is not None else "budget",
        "best_heldout_loss": plateau.best if len(val_images) else None,
        "wall_s": trainer.extra["wall_s"],
    }
    return save_weights(cfg, mae, bcfg, frame_set, out, summary)


@torch.no_grad()
def heldout_loss(
    mae: MaskedAutoencoder,
    images: np.ndarray,
    cfg: PretrainConfig,
    mean: torch.Tensor,
    std: torch.Tensor,
) -> float:
    """Mean masked-patch loss of held-out frames ``(N, H, W, 3)`` at every pretraining scale,
    with the same masks at every evaluation (a fixed generator): differences between two
    evaluations are the model's, not the masks'."""
    was_training = mae.training
    mae.eval()
    device = mean.device
    gen = torch.Generator(device).manual_seed(12345)
    total, count = 0.0, 0
    try:
        for scale in cfg.scales:
            for s in range(0, len(images), cfg.batch_size):
                x = (frames_to_tensor(images[s : s + cfg.batch_size], device) - mean) / std
                tiles = s2_tiles(x, scale, cfg.img_size)
                for t in range(0, len(tiles), cfg.batch_size):
                    part = tiles[t : t + cfg.batch_size]
                    total += float(mae(part, gen)[0]) * len(part)
                    count += len(part)
    finally:
        mae.train(was_training)
    return total / max(1, count)


def save_weights(
    cfg: PretrainConfig,
    mae: MaskedAutoencoder,
    bcfg: dict,
    frames: FrameSet,
    out: Path,
    summary: dict[str, Any],
) -> Path:
    folder = Path(cfg.weights_dir or os.environ.get("S2POLICY_WEIGHTS_DIR", "weights"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{cfg.name}.safetensors"
    partial = path.with_name(path.name + ".partial")
    try:  # written beside and renamed: a failed write never leaves a truncated weights file
        weights = {k: v.detach().cpu().contiguous() for k, v in mae.vit.state_dict().items()}
        save_tensors(weights, partial)
        os.replace(partial, path)
    except OSError as err:
        partial.unlink(missing_ok=True)
        if full := disk_full(err, path, "rerun with resume=true (the checkpoint is kept)"):
            raise full from err
        raise
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    heldout = [[r["step"], r["heldout_loss"]] for r in records if "heldout_loss" in r]
    meta = {
        "backbone": cfg.backbone,
        "img_size": cfg.img_size,
        "method": "mae",
        "steps": summary["steps_done"],
        "step_budget": cfg.steps,
        "final_loss": train[-1]["loss"] if train else None,
        "final_heldout_loss": heldout[-1][1] if heldout else None,
        "frames": int(len(frames)),
        **summary,
        "heldout_curve": heldout,
        "config": asdict(cfg),
        "run_dir": str(out),
    }
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1, default=str))
    plot_loss(records, out / "loss.png", summary.get("plateau_step"))
    shutil.copyfile(out / "loss.png", path.with_suffix(".loss.png"))
    mae.eval()
    mean = torch.tensor(bcfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(bcfg["std"]).view(1, 3, 1, 1)
    sample = frames.images[np.linspace(0, len(frames) - 1, 6).astype(int)]
    device = next(mae.parameters()).device
    images = (frames_to_tensor(sample, device) - mean.to(device)) / std.to(device)
    images = s2_tiles(images, cfg.img_size, cfg.img_size)
    masked, recon = mae.reconstruct(images, torch.Generator(device).manual_seed(0))
    plot_reconstruction(
        images, masked, recon, mean.to(device), std.to(device), out / "reconstruction.png"
    )
    logger.info("saved %s (%s)", path, meta["final_loss"])
    return path


def plot_loss(records: list[dict], path: Path, plateau_step: int | None = None) -> None:
    """The training loss (windows) and the held-out loss against steps, the plateau marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=110)
    train = [r for r in records if "loss" in r]
    heldout = [r for r in records if "heldout_loss" in r]
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="training (window)")
    if heldout:
        ax.plot(
            [r["step"] for r in heldout],
            [r["heldout_loss"] for r in heldout],
            "o-",
            ms=3,
            label="held-out episodes",
        )
    if plateau_step is not None:
        ax.axvline(plateau_step, color="0.5", ls="--", lw=1, label="plateau: cooldown")
    ax.legend(fontsize=7)
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
