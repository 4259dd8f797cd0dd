"""Experiment tracking: what a training, MAE-pretraining or evaluation run measures, sent to
TensorBoard event files or a Weights & Biases run besides ``metrics.jsonl`` and ``results.json``
(which stay the record every other part reads).

``logger=none`` (the default) tracks nothing. ``logger=tensorboard`` writes event files to
``<run>/tensorboard/`` (``tensorboard --logdir outputs``); ``logger=wandb`` writes an offline W&B
run to ``<run>/wandb/`` without touching the network (``wandb sync`` uploads it later). Both need
the ``tracking`` extra (``pip install -e '.[tracking]'``).

A run's metrics records (``step`` plus ``train_loss`` or ``loss``, ``lr``, ``samples_per_s`` or
``images_per_s``, ``val_loss``) arrive through the commands' ``on_log`` callbacks
(:meth:`Tracker.chain`) and are logged at their step as ``train/<name>`` and ``val/<name>``
(``train_loss`` -> ``train/loss``, ``val_loss`` -> ``val/loss``); an evaluation's success rate,
its Wilson 95 % interval, counts and episode videos as ``eval/...`` at the checkpoint's step
(``eval_<randomization>/...`` for held-out settings).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

BACKENDS = ("none", "tensorboard", "wandb")
WANDB_MODES = ("offline", "online")

Record = dict[str, Any]


@dataclass
class LoggerConfig:
    """``configs/logger/*.yaml``: where a run's metrics go besides ``metrics.jsonl``."""

    #: ``none``, ``tensorboard`` or ``wandb``.
    backend: str = "none"
    #: Root folder of the tracking files; null: the run directory (``<run>/tensorboard/``,
    #: ``<run>/wandb/``). Given, TensorBoard writes to ``<dir>/<group>/<name>/`` (group: the
    #: task, or ``pretrain``) and W&B to ``<dir>/wandb/``.
    dir: str | None = None
    #: W&B project.
    project: str = "s2policy"
    #: W&B mode: ``offline`` (no network; ``wandb sync <run>/wandb/offline-run-*`` uploads it)
    #: or ``online``.
    mode: str = "offline"
    #: Name of the tracked run; null: the command's (training: ``run_name``; pretraining:
    #: ``name``; evaluation: the run directory's name).
    name: str | None = None
    #: Log the evaluation's episode videos (TensorBoard: animated GIFs; W&B: the mp4 files).
    videos: bool = True

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(
                f"unknown logger {self.backend!r}; known: {', '.join(BACKENDS)} "
                "(logger=tensorboard on the command line)"
            )
        if self.mode not in WANDB_MODES:
            raise ValueError(f"unknown logger.mode {self.mode!r}; known: {', '.join(WANDB_MODES)}")


def metric_tag(key: str) -> str:
    """``train_loss``/``loss`` -> ``train/loss``, ``val_loss`` -> ``val/loss``, ``lr`` ->
    ``train/lr``."""
    if key.startswith("val_"):
        return "val/" + key.removeprefix("val_")
    return "train/" + key.removeprefix("train_")


def scalars(record: Record) -> dict[str, float]:
    """The numeric entries of a metrics record under their tags (``step`` left out)."""
    return {
        metric_tag(k): float(v)
        for k, v in record.items()
        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def eval_prefix(results: Record) -> str:
    """``eval``, or ``eval_<name>`` when the evaluation ran under other randomization than the
    demonstrations (``randomization=heldout``)."""
    name, trained = results.get("randomization"), results.get("trained_randomization")
    return "eval" if name == trained or name is None else f"eval_{name}"


def eval_scalars(results: Record) -> dict[str, float]:
    """Success rate, its Wilson 95 % interval and the counts of an evaluation's results."""
    prefix = eval_prefix(results)
    low, high = results["ci95"]
    values = {
        "success_rate": results["success_rate"],
        "ci95_low": low,
        "ci95_high": high,
        "successes": results["successes"],
        "n_episodes": results["n_episodes"],
    }
    return {f"{prefix}/{k}": float(v) for k, v in values.items()}


def eval_videos(results: Record) -> list[Path]:
    """The mp4 files an evaluation wrote (beside its ``results.json``)."""
    folder = Path(results["results_file"]).parent
    return [folder / e["video"] for e in results.get("episodes", []) if e.get("video")]


class Tracker:
    """The ``none`` backend, and the interface of the others (every method does nothing here).
    A context manager: leaving it closes the tracked run."""

    def log_metrics(self, record: Record) -> None:
        """Log the numeric entries of a metrics record at ``record["step"]``."""

    def log_evaluation(self, results: Record, step: int) -> None:
        """Log an evaluation's success rate, interval, counts (and videos) at ``step``."""

    def close(self, failed: bool = False) -> None:
        """Flush and close the tracked run (``failed``: it ended with an exception)."""

    def chain(self, on_log: Callable[[Record], None] | None) -> Callable[[Record], None]:
        """An ``on_log`` callback that calls ``on_log`` (a progress bar), then logs the record."""

        def both(record: Record) -> None:
            if on_log is not None:
                on_log(record)
            self.log_metrics(record)

        return both

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)


class TensorBoardTracker(Tracker):
    """Event files in ``log_dir``. The writer starts at the first logged step; with ``purge``,
    events a previous run left at that step or later are dropped (a resumed run logs again
    what followed its checkpoint; a replaced run starts over)."""

    def __init__(self, log_dir: Path, config: Record, purge: bool, videos: bool):
        self.log_dir, self.config, self.purge, self.videos = Path(log_dir), config, purge, videos
        self._writer = None

    def _at(self, step: int):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(
                str(self.log_dir), purge_step=step if self.purge else None, flush_secs=30
            )
            text = json.dumps(self.config, indent=1, default=str)
            self._writer.add_text("config", f"```\n{text}\n```", 0)
        return self._writer

    def log_metrics(self, record: Record) -> None:
        writer = self._at(int(record["step"]))
        for tag, value in scalars(record).items():
            writer.add_scalar(tag, value, int(record["step"]))

    def log_evaluation(self, results: Record, step: int) -> None:
        writer = self._at(step)
        for tag, value in eval_scalars(results).items():
            writer.add_scalar(tag, value, step)
        if self.videos:
            prefix = eval_prefix(results)
            for path in eval_videos(results):
                writer.file_writer.add_summary(gif_summary(f"{prefix}/{path.stem}", path), step)
        writer.flush()

    def close(self, failed: bool = False) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def gif_summary(tag: str, path: Path):
    """A TensorBoard image summary holding the mp4 at ``path`` as an animated GIF (what
    ``SummaryWriter.add_video`` writes, without its moviepy dependency)."""
    import imageio.v3 as iio
    from tensorboard.compat.proto.summary_pb2 import Summary

    frames = iio.imread(path)  # (T, H, W, 3) uint8
    fps = iio.immeta(path).get("fps") or 10
    gif = iio.imwrite("<bytes>", frames, extension=".gif", duration=1000 / fps, loop=0)
    _, height, width, _ = frames.shape
    image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=gif)
    return Summary(value=[Summary.Value(tag=tag, image=image)])


class WandbTracker(Tracker):
    """One W&B run (offline unless ``mode=online``) with its files under ``folder/wandb/``,
    started at the first logged record (a run refused before it trains leaves no files)."""

    def __init__(self, wandb, cfg: LoggerConfig, folder: Path, name, group, job, config):
        self.wandb, self.cfg, self.folder = wandb, cfg, Path(folder)
        self.labels = {"name": name, "group": group, "job_type": job, "config": config}
        self.run = None

    def _run(self):
        if self.run is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.run = self.wandb.init(
                project=self.cfg.project,
                dir=str(self.folder),
                mode=self.cfg.mode,
                settings=self.wandb.Settings(console="off"),
                **self.labels,
            )
        return self.run

    def log_metrics(self, record: Record) -> None:
        self._run().log(scalars(record), step=int(record["step"]))

    def log_evaluation(self, results: Record, step: int) -> None:
        data: dict[str, Any] = dict(eval_scalars(results))
        if self.cfg.videos:
            prefix = eval_prefix(results)
            for path in eval_videos(results):
                data[f"{prefix}/{path.stem}"] = self.wandb.Video(str(path), format="mp4")
        self._run().log(data, step=step)

    def close(self, failed: bool = False) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1 if failed else 0)
            self.run = None


def open_tracker(
    cfg: LoggerConfig,
    run_dir: str | Path,
    name: str,
    group: str,
    job: str,
    config: Record | None = None,
    rank: int = 0,
    purge: bool = True,
) -> Tracker:
    """The tracker of one run: ``run_dir`` holds its files unless ``cfg.dir`` is given;
    ``name`` (unless ``cfg.name``), ``group`` (the task, or ``pretrain``) and ``job`` (``train``,
    ``pretrain``, ``eval``) label it; ``config`` is recorded with it. Ranks other than 0 and
    ``backend=none`` get the no-op :class:`Tracker`. ``purge``: see :class:`TensorBoardTracker`.
    A missing package is a ``ValueError`` naming the extra, before anything runs."""
    if cfg.backend == "none" or rank != 0:
        return Tracker()
    name = cfg.name or name
    config = json.loads(json.dumps(config or {}, default=str))
    try:
        if cfg.backend == "tensorboard":
            import torch.utils.tensorboard  # noqa: F401  (needs the tensorboard package)
        else:
            import wandb
    except ImportError as err:
        raise ValueError(
            f"logger={cfg.backend} needs the {cfg.backend} package, which is not "
            "installed; install the tracking extra (pip install -e '.[tracking]') or use "
            "logger=none"
        ) from err
    if cfg.backend == "tensorboard":
        log_dir = Path(cfg.dir) / group / name if cfg.dir else Path(run_dir) / "tensorboard"
        logger.info("tensorboard event files: %s", log_dir)
        return TensorBoardTracker(log_dir, config, purge, cfg.videos)
    folder = Path(cfg.dir) if cfg.dir else Path(run_dir)
    logger.info("wandb %s run %s in %s", cfg.mode, name, folder / "wandb")
    return WandbTracker(wandb, cfg, folder, name, group, job, config)
