"""Fixed-rate control with asynchronous chunk inference, safety filtering and a watchdog.

Each tick (period ``1 / hz``) the control thread reads the robot's latest observation into the
runner's history, collects finished chunks from the inference worker into the runner's action
queue at the chunk's own tick (so that actions already in the past are skipped: latency
compensation), asks for a new chunk when the runner says the newest one is nearly used up, and
sends the queued (or ensembled) action through the safety filter. It holds the robot instead
when the observation is stale, when no chunk covers the tick (inference missed its deadline
beyond the queued actions), when an action is not finite, and on any exception or Ctrl-C.
Time comes from ``clock``/``sleep``, so tests run it on a fake clock.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from s2policy.policies.runner import ActionRunner, percentiles
from s2policy.robot.interface import RobotInterface
from s2policy.robot.log import RobotLog
from s2policy.robot.safety import SafetyFilter, observation_is_stale

logger = logging.getLogger(__name__)


@dataclass
class LoopConfig:
    #: Control rate (Hz).
    hz: float = 10.0
    #: Ticks per episode at most.
    max_ticks: int = 100
    #: After asking for a chunk, wait up to this long (s) for it before acting, so that a fast
    #: inference serves the current tick (0: never wait; the chunk then serves the next ticks).
    sync_wait_s: float = 0.0

    def __post_init__(self):
        if not 0.1 <= self.hz <= 1000 or self.max_ticks < 1:
            raise ValueError("need 0.1 <= hz <= 1000 and max_ticks >= 1")
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
            wrapping the chunk inference ``history -> (actions (K, A), timing)``, usually
            ``runner.chunk_fn()``.
        robot: the robot.
        runner: the policy's episode state for one environment (history, action queue,
            ensembling, noise generator): a :class:`~s2policy.policies.runner.PolicyRunner`.
        safety: the safety filter; ``max_obs_age_s`` of its config drives the stale rule.
        log: where every tick is recorded (optional).
    """

    def __init__(
        self,
        worker,
        robot: RobotInterface,
        cfg: LoopConfig,
        runner: ActionRunner,
        safety: SafetyFilter,
        log: RobotLog | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        on_tick: Callable[[EpisodeReport], None] | None = None,
    ):
        if runner.n_envs != 1:
            raise ValueError("the robot loop drives one robot: use a runner with n_envs=1")
        self.worker, self.robot, self.cfg, self.runner = worker, robot, cfg, runner
        self.safety, self.log = safety, log
        self.clock, self.sleep, self.on_tick = clock, sleep, on_tick
        self.action_dim = int(robot.spec()["action_dim"])

    def run_episode(self, seed: int | None = None) -> EpisodeReport:
        episode = _Episode(self, seed)
        try:
            episode.run()
        except BaseException:
            episode.report.events.update(["exception"])
            logger.exception("robot loop stopped by an exception; holding the robot")
            raise
        finally:
            try:
                self.robot.hold()
                if episode.report.success is None:  # stopped before a tick read the status
                    episode.report.success = self.robot.status()["success"]
            except Exception:  # noqa: BLE001  (the robot itself failed; nothing more to do)
                logger.exception("could not hold the robot")
            if self.log is not None:
                self.log.end_episode(seed, episode.report.success)
        return episode.report


class _Episode:
    """One episode of an :class:`InferenceLoop`: the ticks and what they report."""

    def __init__(self, loop: InferenceLoop, seed: int | None):
        self.loop, self.seed = loop, seed
        self.report = EpisodeReport(seed)
        self.queue = loop.runner.queues[0]
        self.latency_ms = -1.0  # of the newest chunk (-1: none yet)
        self.started = False  # a chunk has arrived
        self.last_stamp = None

    def run(self) -> None:
        loop = self.loop
        loop.worker.drain()  # an inference of the previous episode: let it end, drop its chunk
        loop.robot.reset(self.seed)
        loop.runner.reset([self.seed])
        first = loop.robot.observe()
        loop.runner.observe(0, first)
        self.last_stamp = first["timestamp"]
        period = 1.0 / loop.cfg.hz
        t0 = loop.clock()
        for tick in range(loop.cfg.max_ticks):
            now = loop.clock()
            self.report.period_error_ms.append(1e3 * (now - (t0 + tick * period)))
            obs = loop.robot.observe()
            if obs["timestamp"] != self.last_stamp:
                loop.runner.observe(0, obs)
                self.last_stamp = obs["timestamp"]
            self.collect(tick)
            if not loop.worker.busy and loop.runner.needs_chunk(0, tick):
                loop.worker.submit(list(loop.runner.histories[0]), tick)
                if loop.cfg.sync_wait_s:
                    loop.worker.wait(loop.cfg.sync_wait_s)
                self.collect(tick)  # a chunk that is already there serves this very tick
            self.act(tick, obs, now)
            if loop.on_tick is not None:
                loop.on_tick(self.report)
            status = loop.robot.status()  # success as of this tick (the final hold adds none)
            self.report.success = status["success"]
            if status["done"]:
                break
            loop.sleep(max(0.0, t0 + (tick + 1) * period - loop.clock()))

    def collect(self, tick: int) -> None:
        """Queue the chunks the worker finished, skipping their actions already past."""
        for result in self.loop.worker.poll():
            self.report.skipped_actions += self.queue.add(result.tick, result.actions, tick)
            self.latency_ms = 1e3 * result.latency_s
            self.report.inference_ms.append(self.latency_ms)
            self.report.encoder_ms.append(result.timing.get("encoder_ms", 0.0))
            self.report.policy_ms.append(result.timing.get("policy_ms", 0.0))
            self.started = True

    def act(self, tick: int, obs: dict[str, Any], now: float) -> None:
        """Send this tick's action through the safety filter, or hold."""
        loop = self.loop
        events: list[str] = []
        proposed = self.queue.action(tick)
        action = None
        if observation_is_stale(obs, now, loop.safety.cfg.max_obs_age_s):
            events.append("stale_obs")
        elif proposed is None:
            if self.started:
                events.append("starved")
        else:
            action, filtered = loop.safety.filter(proposed, obs["state"])
            events += filtered
        if action is None:
            loop.robot.hold()
            self.report.held_ticks += 1
        else:
            loop.robot.act(action)
        self.report.ticks += 1
        self.report.events.update(events)
        if loop.log is not None:
            loop.log.tick(obs, action, proposed, events, now, self.latency_ms, loop.action_dim)


def summarize(reports: list[EpisodeReport]) -> dict[str, Any]:
    """Latency percentiles, control-period jitter, safety events and success over episodes."""

    events = Counter()
    for r in reports:
        events.update(r.events)
    known = [r.success for r in reports if r.success is not None]
    return {
        "episodes": len(reports),
        "ticks": sum(r.ticks for r in reports),
        "held_ticks": sum(r.held_ticks for r in reports),
        "inference_ms": percentiles([x for r in reports for x in r.inference_ms]),
        "encoder_ms": percentiles([x for r in reports for x in r.encoder_ms]),
        "policy_ms": percentiles([x for r in reports for x in r.policy_ms]),
        "period_jitter_ms": percentiles([abs(x) for r in reports for x in r.period_error_ms]),
        "skipped_actions": sum(r.skipped_actions for r in reports),
        "safety_events": dict(events),
        "successes": sum(known) if known else None,
    }
