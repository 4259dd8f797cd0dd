"""Checkpoint selection during training (``train.select``): keep the best weights in
``<run>/best/`` by validation loss or by a short rollout validation.

Validation loss need not follow closed-loop success (README: policy quality), so besides the
lowest validation loss a run can keep the weights with the highest success rate on a few
rollouts from seeds disjoint from the evaluation's (robomimic keeps its best-rollout
checkpoints the same way). Rollouts draw from their own generators, and the global torch RNG is
restored after them, so a run's training (hence its last checkpoint) is the same whether or not
it selects.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from s2policy.policies.artifact import BEST, TrainedPolicy

logger = logging.getLogger(__name__)


class Selector:
    """Scores the current weights at each validation and saves the best as ``<run>/best/``.

    ``save(name, selection)`` writes the current weights (EMA ones when the run keeps an EMA)
    as checkpoint ``name``; ``candidate()`` returns them as a :class:`TrainedPolicy` for
    rollouts. ``state()``/``resume()`` carry the best score across ``train.resume``.
    """

    def __init__(
        self,
        criterion: str,
        eval_cfg,
        episodes: int,
        seed: int,
        device: torch.device,
        out: Path,
        candidate: Callable[[], TrainedPolicy],
        save: Callable[[str, dict[str, Any]], Path],
    ):
        self.criterion = criterion
        seeds = list(range(seed, seed + episodes))
        # the evaluation's execution and randomization, on the selection seeds, writing nothing
        self.eval_cfg = dataclasses.replace(
            eval_cfg, seeds=seeds, n_episodes=episodes, n_videos=0, n_records=0
        )
        self.device, self.out = device, out
        self.candidate, self.save = candidate, save
        self.best: dict[str, Any] | None = None

    def score(self, record: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        """Higher is better: minus the validation loss, or the rollouts' success rate."""
        if self.criterion == "val_loss":
            return -float(record["val_loss"]), {}
        from s2policy.evaluation.rollout import play

        with torch.random.fork_rng(devices=_cuda(self.device)):
            _, _, episodes = play(self.eval_cfg, self.candidate(), self.device, self.out)
        wins = sum(e["success"] for e in episodes)
        return wins / len(episodes), {"select_success": wins / len(episodes)}

    def __call__(self, step: int, record: dict[str, Any]) -> dict[str, Any]:
        """Score the weights of ``step`` (``record``: the validation entries so far); saves
        them when they are at least as good as the best so far. Returns entries to log."""
        score, entries = self.score(record)
        if self.best is None or score >= self.best["score"]:
            self.best = {"criterion": self.criterion, "score": score, "step": step}
            if self.criterion == "rollout":
                self.best["seeds"] = self.eval_cfg.seed_list()
            self.save(BEST, dict(self.best))
            logger.info("best weights (%s %.4f) at step %d", self.criterion, score, step)
        return {**entries, "best_step": self.best["step"]}

    def state(self) -> dict[str, Any] | None:
        return dict(self.best) if self.best else None

    def resume(self, state: dict[str, Any] | None) -> None:
        self.best = dict(state) if state else None


def _cuda(device: torch.device) -> list[int]:
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]
