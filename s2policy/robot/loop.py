"""Fixed-rate control with asynchronous chunk inference, safety filtering and a watchdog.

Each tick (period ``1 / hz``) the control thread reads the robot's latest observation, collects
finished chunks from the inference worker (skipping their past actions), asks for a new chunk
when the newest one is nearly used up, and sends the scheduled action through the safety
filter. It holds the robot instead when the observation is stale, when no chunk covers the tick
(inference missed its deadline beyond the queued actions), when an action is not finite, and
on any exception or Ctrl-C. Time comes from ``clock``/``sleep``, so tests run it on a fake
clock.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from s2policy.robot.interface import RobotInterface
from s2policy.robot.log import RobotLog
from s2policy.robot.safety import SafetyFilter, observation_is_stale
from s2policy.robot.scheduler import ActionScheduler

logger = logging.getLogger(__name__)


@dataclass
class LoopConfig:
    #: Control rate (Hz).
    hz: float = 10.0
    #: Ticks per episode at most.
    max_ticks: int = 100
    #: Ask for a new chunk when the newest has at most this many actions left.
    infer_when_remaining: int = 2
    #: ACT temporal ensembling decay (null: newest chunk wins).
    ensemble_decay: float | None = None
    #: After asking for a chunk, wait up to this long (s) for it before acting, so that a fast
    #: inference serves the current tick (0: never wait; the chunk then serves the next ticks).
    sync_wait_s: float = 0.0

    def __post_init__(self):
        if not 0.1 <= self.hz <= 1000 or self.max_ticks < 1 or self.infer_when_remaining < 0:
            raise ValueError("need 0.1 <= hz <= 1000, max_ticks >= 1, infer_when_remaining >= 0")
        if not 0 <= self.sync_wait_s < 1 / self.hz:
            raise ValueError(f"sync_wait_s must be in [0, 1/hz), got {self.sync_wait_s}")


@dataclass
class EpisodeReport:
    seed: int | None
    ticks: int = 0
    held_ticks: int = 0
    success: bool | None = None
    events: Counter = field(default_factory=Counter)
    inference_ms: list[float] = field(default_factory=list)
    encoder_ms: list[float] = field(default_factory=list)
    policy_ms: list[float] = field(default_factory=list)
    period_error_ms: list[float] = field(default_factory=list)
    skipped_actions: int = 0


class InferenceLoop:
    """Run a policy on a robot; see the module docstring.

    Args:
        worker: a :class:`~s2policy.robot.worker.ThreadWorker` (or a simulated one in tests)
            wrapping the chunk inference ``history -> (actions (K, A), timing)``.
        robot: the robot.
        n_obs_steps: observations per inference (the policy's).
        safety: the safety filter; ``max_obs_age_s`` of its config drives the stale rule.
        log: where every tick is recorded (optional).
    """

    def __init__(
        self,
        worker,
        robot: RobotInterface,
        cfg: LoopConfig,
        n_obs_steps: int,
        safety: SafetyFilter,
        log: RobotLog | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        on_tick: Callable[[EpisodeReport], None] | None = None,
    ):
        self.worker, self.robot, self.cfg = worker, robot, cfg
        self.n_obs_steps, self.safety, self.log = n_obs_steps, safety, log
        self.clock, self.sleep, self.on_tick = clock, sleep, on_tick
        self.action_dim = int(robot.spec()["action_dim"])

    def run_episode(self, seed: int | None = None) -> EpisodeReport:
        report = EpisodeReport(seed)
        scheduler = ActionScheduler(self.cfg.ensemble_decay)
        period = 1.0 / self.cfg.hz
        try:
            self.robot.reset(seed)
            first = self.robot.observe()
            history = deque([first] * self.n_obs_steps, maxlen=self.n_obs_steps)
            last_stamp, state = first["timestamp"], {"latency_ms": -1.0, "started": False}

            def collect(tick: int) -> None:
                for result in self.worker.poll():
                    report.skipped_actions += scheduler.add(result.tick, result.actions, tick)
                    state["latency_ms"] = 1e3 * result.latency_s
                    report.inference_ms.append(state["latency_ms"])
                    report.encoder_ms.append(result.timing.get("encoder_ms", 0.0))
                    report.policy_ms.append(result.timing.get("policy_ms", 0.0))
                    state["started"] = True

            t0 = self.clock()
            for tick in range(self.cfg.max_ticks):
                now = self.clock()
                report.period_error_ms.append(1e3 * (now - (t0 + tick * period)))
                obs = self.robot.observe()
                if obs["timestamp"] != last_stamp:
                    history.append(obs)
                    last_stamp = obs["timestamp"]
                collect(tick)
                if (
                    not self.worker.busy
                    and scheduler.remaining(tick) <= self.cfg.infer_when_remaining
                ):
                    self.worker.submit(list(history), tick)
                    if self.cfg.sync_wait_s:
                        self.worker.wait(self.cfg.sync_wait_s)
                    collect(tick)  # a chunk that is already there serves this very tick
                events: list[str] = []
                proposed = scheduler.action(tick)
                action = None
                if observation_is_stale(obs, now, self.safety.cfg.max_obs_age_s):
                    events.append("stale_obs")
                elif proposed is None:
                    if state["started"]:
                        events.append("starved")
                else:
                    action, filtered = self.safety.filter(proposed, obs["state"])
                    events += filtered
                if action is None:
                    self.robot.hold()
                    report.held_ticks += 1
                else:
                    self.robot.act(action)
                report.ticks += 1
                report.events.update(events)
                if self.log is not None:
                    self.log.tick(
                        obs, action, proposed, events, now, state["latency_ms"], self.action_dim
                    )
                if self.on_tick is not None:
                    self.on_tick(report)
                if self.robot.status()["done"]:
                    break
                self.sleep(max(0.0, t0 + (tick + 1) * period - self.clock()))
        except BaseException:
            report.events.update(["exception"])
            logger.exception("robot loop stopped by an exception; holding the robot")
            raise
        finally:
            try:
                self.robot.hold()
                report.success = self.robot.status()["success"]
            except Exception:  # noqa: BLE001  (the robot itself failed; nothing more to do)
                logger.exception("could not hold the robot")
            if self.log is not None:
                self.log.end_episode(seed, report.success)
        return report


def summarize(reports: list[EpisodeReport]) -> dict[str, Any]:
    """Latency percentiles, control-period jitter, safety events and success over episodes."""

    def pct(values):
        if not values:
            return {}
        v = np.asarray(values)
        return {f"p{q}": float(np.percentile(v, q)) for q in (50, 95, 99)} | {"max": float(v.max())}

    events = Counter()
    for r in reports:
        events.update(r.events)
    known = [r.success for r in reports if r.success is not None]
    return {
        "episodes": len(reports),
        "ticks": sum(r.ticks for r in reports),
        "held_ticks": sum(r.held_ticks for r in reports),
        "inference_ms": pct([x for r in reports for x in r.inference_ms]),
        "encoder_ms": pct([x for r in reports for x in r.encoder_ms]),
        "policy_ms": pct([x for r in reports for x in r.policy_ms]),
        "period_jitter_ms": pct([abs(x) for r in reports for x in r.period_error_ms]),
        "skipped_actions": sum(r.skipped_actions for r in reports),
        "safety_events": dict(events),
        "successes": sum(known) if known else None,
    }
