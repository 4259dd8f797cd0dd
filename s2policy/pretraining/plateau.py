"""When pretraining has converged: the held-out loss stops improving (:class:`Plateau`), and
what then happens to the learning rate (:class:`StopConfig`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass
class StopConfig:
    """``stop.*`` of ``configs/pretrain.yaml``: end pretraining before ``steps`` (the budget)
    once the held-out loss has plateaued.

    The rule: after each held-out evaluation, the run has plateaued when the ``patience`` latest
    evaluations all failed to lower the held-out loss by at least ``min_rel_improvement``
    (relative) below the last loss that did (:class:`Plateau`'s anchor). Then the learning rate
    decays linearly to 0 over ``cooldown_fraction`` x the steps done (with
    ``schedule=constant``: warmup-stable-decay), and the run ends; with the cosine schedule it
    ends at once. With ``schedule=constant`` and no plateau within the budget ``steps``, the
    cooldown starts at the first held-out evaluation in the budget's last ``cooldown_fraction``
    (at ``val_every=250``, ``steps=6000`` and 0.2: step 5000, a cooldown of 1000 steps) and the
    run is recorded as stopped by its budget, not converged.
    """

    #: Evaluations without enough improvement that make a plateau (0: run the whole budget).
    patience: int = 0
    #: The relative improvement of the held-out loss that counts (0.01: 1 %).
    min_rel_improvement: float = 0.01
    #: The learning-rate cooldown after a plateau, as a fraction of the steps done.
    cooldown_fraction: float = 0.2

    def __post_init__(self):
        if self.patience < 0:
            raise ValueError(f"stop.patience must be >= 0, got {self.patience}")
        if not 0 <= self.min_rel_improvement < 1:
            raise ValueError(
                f"stop.min_rel_improvement must be in [0, 1), got {self.min_rel_improvement}"
            )
        if not 0 <= self.cooldown_fraction <= 1:
            raise ValueError(
                f"stop.cooldown_fraction must be in [0, 1], got {self.cooldown_fraction}"
            )

    @property
    def enabled(self) -> bool:
        return self.patience > 0

    def rule(self) -> str:
        """The rule in words (recorded with the weights)."""
        if not self.enabled:
            return "no plateau rule: the whole step budget"
        return (
            f"plateau when {self.patience} held-out evaluations in a row lower the held-out loss "
            f"by less than {100 * self.min_rel_improvement:g} % (relative) below the last one "
            f"that did, then a linear "
            f"learning-rate cooldown over {100 * self.cooldown_fraction:g} % of the steps done"
        )


class Plateau:
    """:meth:`update` says when :class:`StopConfig`'s rule fires. As in PyTorch's
    ``ReduceLROnPlateau`` (``threshold_mode="rel"``) and Keras' ``EarlyStopping``, an improvement
    counts only against the loss of the last one that counted (:attr:`anchor`), so a slow steady
    fall of the loss keeps resetting the count once it adds up to ``min_rel_improvement``."""

    def __init__(self, patience: int, min_rel_improvement: float):
        self.patience, self.min_rel = patience, min_rel_improvement
        self.anchor = math.inf  # the loss of the last improvement that counted
        self.best = math.inf  # the lowest loss seen
        self.best_step = -1
        self.since = 0  # evaluations since the last improvement that counted

    def update(self, loss: float, step: int) -> bool:
        """Record the held-out ``loss`` at ``step``; True once it has plateaued (and after)."""
        if not math.isfinite(loss):
            raise ValueError(f"the held-out loss is {loss} at step {step}: training diverged")
        if loss < self.best:
            self.best, self.best_step = loss, step
        if loss < self.anchor * (1 - self.min_rel):
            self.anchor, self.since = loss, 0
        else:
            self.since += 1
        return self.patience > 0 and self.since >= self.patience

    def state(self) -> dict[str, Any]:
        return {
            "anchor": self.anchor,
            "best": self.best,
            "best_step": self.best_step,
            "since": self.since,
        }

    def load(self, state: dict[str, Any]) -> None:
        self.anchor = float(state["anchor"])
        self.best = float(state["best"])
        self.best_step = int(state["best_step"])
        self.since = int(state["since"])
