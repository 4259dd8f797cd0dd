"""Every control tick of a robot run, stored as a ReplayBuffer episode (robot runs become data).

Per tick: the observation (camera images, ``state``), ``action`` (what was sent; zeros when
held), ``policy_action`` (what the policy asked for; zeros when it had none), ``held``,
``safety_events`` (bit ``k`` = ``EVENTS[k]``), ``timestamp`` (observation time), ``tick_time``,
``obs_age_s`` and ``inference_latency_ms`` (of the newest chunk; -1 before the first).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from s2policy.data.store import ReplayBuffer
from s2policy.robot.safety import EVENTS


def events_mask(events: list[str]) -> int:
    return sum(1 << EVENTS.index(e) for e in set(events))


def events_from_mask(mask: int) -> list[str]:
    return [e for k, e in enumerate(EVENTS) if mask >> k & 1]


class RobotLog:
    def __init__(self, path: str | Path, attrs: dict[str, Any]):
        self.buffer = ReplayBuffer.create(path, attrs={**attrs, "source": "robot"})
        self._ticks: list[dict[str, Any]] = []

    def tick(
        self,
        obs: dict[str, Any],
        action: np.ndarray | None,
        policy_action: np.ndarray | None,
        events: list[str],
        tick_time: float,
        latency_ms: float,
        action_dim: int,
    ) -> None:
        zeros = np.zeros(action_dim, dtype=np.float32)
        self._ticks.append(
            {
                **{k: v for k, v in obs.items() if k != "timestamp"},
                "action": zeros if action is None else np.asarray(action, np.float32),
                "policy_action": zeros
                if policy_action is None
                else np.asarray(policy_action, np.float32),
                "held": np.uint8(action is None),
                "safety_events": np.int64(events_mask(events)),
                "timestamp": np.float64(obs["timestamp"]),
                "tick_time": np.float64(tick_time),
                "obs_age_s": np.float64(tick_time - obs["timestamp"]),
                "inference_latency_ms": np.float32(latency_ms),
            }
        )

    def end_episode(self, seed: int | None, success: bool | None) -> None:
        if not self._ticks:
            return
        data = {k: np.stack([t[k] for t in self._ticks]) for k in self._ticks[0]}
        self.buffer.add_episode(
            data,
            meta={
                "episode_seeds": np.int64(-1 if seed is None else seed),
                "episode_success": np.int8(-1 if success is None else success),
            },
        )
        self._ticks = []
