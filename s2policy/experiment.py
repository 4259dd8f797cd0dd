"""One job of a sweep: train a policy, then (optionally) evaluate it in its task."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from s2policy.training.config import RunConfig


def run_experiment(
    cfg: RunConfig,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    on_episode: Callable[[dict[str, Any]], None] | None = None,
    on_start: Callable[[], None] | None = None,
) -> tuple[Path, dict[str, Any] | None]:
    """Train ``cfg``; with ``cfg.eval.enabled``, evaluate the checkpoint (rank 0 under DDP)
    with the linear-probe R² of the same cached features in its results. Returns the checkpoint
    directory and the evaluation results (or ``None``). ``cfg.logger`` tracks the metrics
    records (besides ``on_log``) and the evaluation (rank 0 only). ``on_start()`` runs once
    every check of the run passed, before its first step (rank 0 only)."""
    import os

    from s2policy.tracking import open_tracker

    rank = int(os.environ.get("RANK", "0"))
    with open_tracker(
        cfg.logger, cfg.output_dir, cfg.run_name, cfg.task.name, "train", cfg.to_dict(), rank
    ) as tracker:
        start = on_start if rank == 0 else None
        return _train_and_evaluate(cfg, tracker.chain(on_log), on_episode, tracker, rank, start)


def _train_and_evaluate(cfg: RunConfig, on_log, on_episode, tracker, rank: int, on_start):
    from s2policy.training.loop import fit

    result = fit(cfg, on_log, on_start)
    if not cfg.eval.enabled or rank != 0 or not result.checkpoint.exists():
        return result.checkpoint, None
    from s2policy.evaluation.probe import probe_cache
    from s2policy.evaluation.rollout import evaluate
    from s2policy.policies.artifact import load
    from s2policy.runtime import resolve_device

    eval_cfg = dataclasses.replace(
        cfg.eval,
        checkpoint=str(result.checkpoint),
        device=cfg.train.device,
        task=cfg.task,
        encoder=cfg.encoder,
    )
    trained = load(result.checkpoint, eval_cfg.use_ema, resolve_device(eval_cfg.device))
    if trained.task is None:  # a dataset-defined run: no simulator, its held-out episodes
        from s2policy.evaluation.offline import OfflineConfig, evaluate_offline

        offline = OfflineConfig(
            checkpoint=str(result.checkpoint), device=cfg.train.device, use_ema=eval_cfg.use_ema
        )
        return result.checkpoint, evaluate_offline(offline, trained)
    extra = {}
    if result.cache is not None:  # linear-probe R² of the same features, for the report
        extra["probe"] = probe_cache(cfg.dataset, result.cache, seed=cfg.train.seed)
    return result.checkpoint, evaluate(eval_cfg, on_episode, trained, extra, tracker)
