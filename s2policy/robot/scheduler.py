"""Timed action chunks -> one action per control tick (latency compensation, ensembling).

A chunk inferred from the observation of tick ``i`` holds the actions of ticks ``i, i+1, ...``.
When it arrives at tick ``j > i`` (inference took ``j - i`` ticks), its first ``j - i`` actions
are already in the past and are skipped. Without ensembling the newest chunk that covers a tick
gives its action; with ``ensemble_decay = m`` every chunk that covers the tick contributes, the
``i``-th oldest with weight ``exp(-m * i)`` (ACT's temporal ensembling, Zhao et al. 2023).
"""

from __future__ import annotations

import numpy as np


def ensemble_weights(n: int, decay: float) -> np.ndarray:
    """Normalized weights of ``n`` overlapping predictions, oldest first: ``exp(-decay * i)``."""
    w = np.exp(-decay * np.arange(n))
    return w / w.sum()


class ActionScheduler:
    def __init__(self, ensemble_decay: float | None = None):
        if ensemble_decay is not None and ensemble_decay < 0:
            raise ValueError(f"ensemble_decay must be >= 0 or None, got {ensemble_decay}")
        self.decay = ensemble_decay
        self.chunks: list[tuple[int, np.ndarray]] = []  # (tick of its first action, (K, A))

    def add(self, first_tick: int, actions: np.ndarray, now_tick: int) -> int:
        """Add a chunk; returns how many of its actions were skipped as already past."""
        actions = np.asarray(actions)
        skipped = max(0, now_tick - first_tick)
        if skipped < len(actions):
            self.chunks.append((first_tick, actions))
        self.chunks = [(f, a) for f, a in self.chunks if f + len(a) > now_tick]
        return min(skipped, len(actions))

    def action(self, tick: int) -> np.ndarray | None:
        """The action for ``tick``, or ``None`` when no chunk covers it."""
        covering = [a[tick - f] for f, a in self.chunks if f <= tick < f + len(a)]
        if not covering:
            return None
        if self.decay is None:
            return covering[-1]
        return np.tensordot(ensemble_weights(len(covering), self.decay), np.stack(covering), 1)

    def remaining(self, tick: int) -> int:
        """Actions of the newest chunk for ``tick`` and after."""
        if not self.chunks:
            return 0
        first, actions = self.chunks[-1]
        return max(0, first + len(actions) - tick)

    def clear(self) -> None:
        self.chunks.clear()
