"""Typed configs of a training run (``configs/config.yaml`` and ``configs/train/*.yaml``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from s2policy.encoders.s2 import EncoderConfig
from s2policy.evaluation.config import EvalConfig
from s2policy.features.augment import AugmentConfig
from s2policy.task import TaskConfig
from s2policy.tracking import LoggerConfig

#: ``train.select``: the last weights, or the best by validation loss or by rollouts.
SELECT = ("last", "val_loss", "rollout")


@dataclass
class TrainConfig:
    """Optimization and bookkeeping of one training run."""

    steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-6
    warmup_steps: int = 100
    #: Gradient-norm clipping (0: off).
    grad_clip: float = 1.0
    #: Train on the store's first ``n_demos`` episodes only (null: all of them); ``val_ratio``
    #: of those are held out. For success against the number of demonstrations: one store and
    #: one feature cache serve every count.
    n_demos: int | None = None
    #: Fraction of episodes held out for the validation loss.
    val_ratio: float = 0.1
    val_every: int = 200
    log_every: int = 50
    #: Save ``checkpoint/`` (with training state) every this many steps, and at the end.
    ckpt_every: int = 500
    seed: int = 0
    #: ``auto`` (GPU when present), ``cpu``, ``cuda``.
    device: str = "auto"
    #: Autocast dtype: ``auto`` (bfloat16 on GPU, float32 on CPU), ``float32``, ``bfloat16``.
    dtype: str = "auto"
    #: Continue from ``<output_dir>/checkpoint`` when it exists.
    resume: bool = False
    #: Replace a run directory that already holds a checkpoint (otherwise that is refused).
    overwrite: bool = False
    #: Build the feature cache when it is missing (false: fail, listing the caches present).
    build_cache: bool = True
    #: Feature-cache build options (used when the cache is missing).
    cache_batch_size: int = 64
    cache_chunk_steps: int = 256
    #: Which weights the run's evaluation gets: ``last`` (the final step), ``val_loss`` (the
    #: lowest validation loss) or ``rollout`` (the highest success rate on ``select_episodes``
    #: episodes from seed ``select_seed``, disjoint from the evaluation's seeds), checked every
    #: ``val_every`` steps and at the end; kept in ``<run>/best/`` (ties: the later step).
    #: ``val_loss`` ranks the raw weights; rollouts run the weights evaluation would (EMA ones
    #: when the policy keeps them and ``eval.use_ema``).
    select: str = "last"
    select_episodes: int = 20
    select_seed: int = 900_000
    #: Augmented views cached per frame (``augment.views``); training draws one version of
    #: each sample's frames among the plain one and the views (s2policy.features.augment).
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self):
        for name in (
            "steps",
            "batch_size",
            "val_every",
            "log_every",
            "ckpt_every",
            "cache_batch_size",
            "cache_chunk_steps",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0 or self.grad_clip < 0 or self.warmup_steps < 0:
            raise ValueError("train.lr must be > 0 and weight_decay, grad_clip, warmup_steps >= 0")
        if not 0 <= self.val_ratio < 1:
            raise ValueError(f"train.val_ratio must be in [0, 1), got {self.val_ratio}")
        if self.n_demos is not None and self.n_demos < 1:
            raise ValueError(f"train.n_demos must be >= 1 or null, got {self.n_demos}")
        if self.select not in SELECT:
            raise ValueError(f"unknown train.select {self.select!r}; known: {', '.join(SELECT)}")
        if self.select == "val_loss" and self.val_ratio == 0:
            raise ValueError(
                "train.select=val_loss needs validation episodes (train.val_ratio > 0)"
            )
        if self.select_episodes < 1:
            raise ValueError(f"train.select_episodes must be >= 1, got {self.select_episodes}")


@dataclass
class RunConfig:
    """``configs/config.yaml``: one policy trained on one dataset with one encoder."""

    task: TaskConfig = field(default_factory=TaskConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    #: A policy config (``configs/policy/mlp.yaml``, ``diffusion.yaml``).
    policy: Any = MISSING
    train: TrainConfig = field(default_factory=TrainConfig)
    #: Evaluation right after training (``eval.enabled=true``; what a sweep job runs).
    eval: EvalConfig = field(default_factory=EvalConfig)
    #: Experiment tracking (``logger=tensorboard|wandb``; ``configs/logger/``): losses, lr,
    #: samples/s, validation loss and the evaluation's success rate and videos.
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    #: The demonstration store; by convention ``datasets/<task>.zarr``.
    dataset: str = "datasets/cube_pick.zarr"
    #: Name of the run (its directory under ``outputs/<task>/``).
    run_name: str = "run"
    #: Suffix of the default run name (e.g. ``_mae`` to keep runs with other weights apart).
    run_tag: str = ""
    #: The folder runs are grouped in (``outputs/<run_group>/<run_name>``): the store's
    #: simulated task, or the store's name for a dataset-defined run (``configs/config.yaml``).
    run_group: str = ""
    #: Run directory (hydra's output directory by default).
    output_dir: str = "outputs/run"

    def __post_init__(self):
        train = self.train
        if train.select == "rollout" and isinstance(self.eval, EvalConfig):
            chosen = set(range(train.select_seed, train.select_seed + train.select_episodes))
            shared = sorted(chosen & set(self.eval.seed_list()))
            if shared:
                raise ValueError(
                    f"train.select=rollout would choose the weights on evaluation seeds "
                    f"({shared[0]}..{shared[-1]}); move train.select_seed away from eval.seed"
                )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["task"] = self.task.to_dict()
        d["encoder"] = self.encoder.to_dict()
        return d
