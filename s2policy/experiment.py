"""One job of a sweep: train a policy, then (optionally) evaluate it in its task."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from s2policy.training.config import RunConfig


def run_experiment(
    cfg: RunConfig,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    on_episode: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[Path, dict[str, Any] | None]:
    """Train ``cfg``; with ``cfg.eval.enabled``, evaluate the checkpoint (rank 0 under DDP).
    Returns the checkpoint directory and the evaluation results (or ``None``)."""
    from s2policy.training.loop import train

    checkpoint = train(cfg, on_log)
    if not cfg.eval.enabled or not checkpoint.exists():
        return checkpoint, None
    from s2policy.evaluation.probe import probe_cache
    from s2policy.evaluation.rollout import EvalConfig, evaluate
    from s2policy.features.cache import list_caches
    from s2policy.training.checkpoint import read_info

    eval_cfg = EvalConfig(
        checkpoint=str(checkpoint),
        n_episodes=cfg.eval.n_episodes,
        seed=cfg.eval.seed,
        n_envs=cfg.eval.n_envs,
        n_videos=cfg.eval.n_videos,
        device=cfg.train.device,
        task=cfg.task.name,
        encoder=cfg.encoder,
        randomization=cfg.eval.randomization,
    )
    results = evaluate(eval_cfg, on_episode)
    fingerprint = read_info(checkpoint)["cache_fingerprint"]
    if fingerprint is not None:  # linear-probe R² of the same features, for the report
        cache = next(c for c in list_caches(cfg.dataset) if c.fingerprint == fingerprint)
        results["probe"] = probe_cache(cfg.dataset, cache, seed=cfg.train.seed)
        Path(results["results_file"]).write_text(json.dumps(results, indent=1))
    return checkpoint, results
