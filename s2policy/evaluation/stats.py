"""Success-rate statistics: every rate is reported with its episode count and a 95 % interval."""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist


@dataclass(frozen=True)
class SuccessRate:
    successes: int
    episodes: int
    low: float
    high: float

    @property
    def rate(self) -> float:
        return self.successes / self.episodes

    def __str__(self) -> str:
        return (
            f"{100 * self.rate:.1f}% [{100 * self.low:.1f}, {100 * self.high:.1f}] "
            f"({self.successes}/{self.episodes})"
        )


def wilson_interval(successes: int, episodes: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (well-behaved at 0 % and 100 %)."""
    if episodes <= 0:
        raise ValueError(f"episodes must be > 0, got {episodes}")
    if not 0 <= successes <= episodes:
        raise ValueError(f"successes must be in [0, {episodes}], got {successes}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / episodes
    denom = 1 + z * z / episodes
    centre = (p + z * z / (2 * episodes)) / denom
    half = z * math.sqrt(p * (1 - p) / episodes + z * z / (4 * episodes * episodes)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def success_rate(successes: int, episodes: int, confidence: float = 0.95) -> SuccessRate:
    low, high = wilson_interval(successes, episodes, confidence)
    return SuccessRate(int(successes), int(episodes), low, high)


def difference_interval(
    successes_a: int,
    episodes_a: int,
    successes_b: int,
    episodes_b: int,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """``(p_a - p_b, low, high)``: the difference of two independent success rates with
    Newcombe's hybrid score interval (method 10 of Newcombe 1998, from the two Wilson
    intervals), the interval to compare two configurations by — not the overlap of their own
    intervals."""
    la, ua = wilson_interval(successes_a, episodes_a, confidence)
    lb, ub = wilson_interval(successes_b, episodes_b, confidence)
    pa, pb = successes_a / episodes_a, successes_b / episodes_b
    d = pa - pb
    low = d - math.sqrt((pa - la) ** 2 + (ub - pb) ** 2)
    high = d + math.sqrt((ua - pa) ** 2 + (pb - lb) ** 2)
    return d, max(-1.0, low), min(1.0, high)
