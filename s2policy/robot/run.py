"""Run a checkpoint on a robot: ``python -m s2policy.robot.run checkpoint=... robot=sim hz=10``.

``robot=sim`` drives the checkpoint's own task in simulation (:class:`SimRobot`);
``robot=remote`` connects to a :class:`~s2policy.robot.remote.RobotServer` at ``address``.
Every tick is logged to ``<run>/robot/<date>.zarr`` (a ReplayBuffer store) and a summary
(inference p50/p95/p99, control-period jitter, safety events, success) to ``summary.json``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from s2policy.data.spec import DataSpec
from s2policy.policies.artifact import TrainedPolicy, load
from s2policy.policies.runner import PolicyRunner, check_ensemble_decay
from s2policy.robot.interface import RobotInterface
from s2policy.robot.log import RobotLog
from s2policy.robot.loop import EpisodeReport, InferenceLoop, LoopConfig, summarize
from s2policy.robot.safety import SafetyConfig, SafetyFilter
from s2policy.robot.worker import ThreadWorker
from s2policy.runtime import resolve_device

logger = logging.getLogger(__name__)


@dataclass
class RobotRunConfig:
    #: A run directory or its ``checkpoint/``.
    checkpoint: str = "???"
    #: ``sim`` (the checkpoint's task in simulation) or ``remote`` (a RobotServer).
    robot: str = "sim"
    address: str = "tcp://127.0.0.1:5555"
    timeout_ms: int = 1000
    #: CURVE keys (``python -m s2policy.robot.keys``) for ``robot=remote``: this client's
    #: ``<name>.key_secret`` and the server's public ``<name>.key``; null: no keys (loopback).
    client_secret_file: str | None = None
    server_public_file: str | None = None
    #: Control rate; null: the task's.
    hz: float | None = None
    episodes: int = 3
    #: Episode ``i`` of a simulated robot is reset with seed ``seed + i``.
    seed: int = 200_000
    max_ticks: int = 100
    #: Ask for a new chunk when the newest has at most this many actions left.
    infer_when_remaining: int = 2
    #: Actions executed per chunk; null: the policy's ``n_action_steps``.
    n_action_steps: int | None = None
    #: ACT temporal ensembling decay (null: newest chunk wins).
    ensemble_decay: float | None = None
    #: Wait up to this long (s) for a requested chunk before acting (see LoopConfig).
    sync_wait_s: float = 0.0
    device: str = "auto"
    num_inference_steps: int | None = None
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    #: Log folder; null: ``<run>/robot``.
    log_dir: str | None = None

    def __post_init__(self):
        if self.robot not in ("sim", "remote"):
            raise ValueError(f"robot must be 'sim' or 'remote', got {self.robot!r}")
        if self.episodes < 1:
            raise ValueError("episodes must be >= 1")
        check_ensemble_decay(self.ensemble_decay)


def check_robot(spec: dict[str, Any], trained: TrainedPolicy) -> None:
    """The robot must offer what the policy was trained on: the checkpoint's cameras at their
    image sizes, its state and action sizes (and names, where both give them)."""
    problems = []
    if trained.is_oracle:
        problems.append("an oracle policy needs the simulator's privileged object state")
    robot = DataSpec.from_robot(spec)
    problems += trained.spec.mismatches(robot)
    if problems:
        raise ValueError(
            f"the robot does not match the checkpoint: {'; '.join(problems)} (checkpoint: "
            f"{trained.spec.describe()}; robot: {robot.describe()})"
        )


def run_robot(
    cfg: RobotRunConfig,
    on_tick: Callable[[EpisodeReport], None] | None = None,
    robot: RobotInterface | None = None,
) -> dict[str, Any]:
    """Run ``cfg.episodes`` episodes and return the summary (also written to summary.json)."""
    device = resolve_device(cfg.device)
    trained = load(cfg.checkpoint, device=device)
    task = trained.task
    if robot is None:
        from s2policy.robot.remote import RemoteRobot
        from s2policy.robot.sim_robot import SimRobot

        if cfg.robot == "sim" and task is None:
            raise ValueError(
                f"checkpoint {cfg.checkpoint} was trained on a dataset of its own "
                f"({trained.spec.describe()}): there is no simulated robot for it; run it with "
                "robot=remote on its robot"
            )
        robot = (
            SimRobot(task, max_episode_steps=cfg.max_ticks)
            if cfg.robot == "sim"
            else RemoteRobot(
                cfg.address,
                cfg.timeout_ms,
                client_secret_file=cfg.client_secret_file,
                server_public_file=cfg.server_public_file,
                policy_spec=trained.spec,
            )
        )
    spec = robot.spec()
    check_robot(spec, trained)
    hz = cfg.hz or float(spec["control_hz"])
    out = Path(cfg.log_dir) if cfg.log_dir else trained.run_dir / "robot"
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    log = RobotLog(
        out / f"{stamp}.zarr",
        attrs={
            # a simulated robot's log is that task's data; a real robot's defines its own run
            **({"task": task.name, "env": task.env.to_dict()} if cfg.robot == "sim" else {}),
            "cameras": spec["cameras"],
            "control_hz": hz,
            "checkpoint": str(trained.path),
            "robot": cfg.robot,
            "data_spec": trained.spec.to_dict(),
        },
    )
    runner = PolicyRunner(
        trained,
        1,
        device,
        cfg.num_inference_steps,
        cfg.n_action_steps,
        cfg.ensemble_decay,
        cfg.infer_when_remaining,
    )
    worker = ThreadWorker(runner.chunk_fn(), time.monotonic)
    loop = InferenceLoop(
        worker,
        robot,
        LoopConfig(hz, cfg.max_ticks, cfg.sync_wait_s),
        runner,
        SafetyFilter(cfg.safety, spec),
        log,
        on_tick=on_tick,
    )
    reports = []
    try:
        for i in range(cfg.episodes):
            reports.append(loop.run_episode(cfg.seed + i))
    finally:
        worker.close()
        robot.close()
        log.buffer.close()  # the log's writer lock
    summary = {**summarize(reports), "hz": hz, "log": str(log.buffer.path), "config": asdict(cfg)}
    (out / f"{stamp}_summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def _run(cfg: RobotRunConfig) -> None:
    logging.getLogger("s2policy").setLevel(logging.INFO)
    last = [0.0]

    def on_tick(report: EpisodeReport) -> None:
        now = time.monotonic()
        if now - last[0] >= 1.0 and report.inference_ms:
            last[0] = now
            print(
                f"\repisode seed {report.seed} tick {report.ticks:4d}  inference "
                f"{report.inference_ms[-1]:6.1f} ms  held {report.held_ticks}",
                end="",
                flush=True,
            )

    summary = run_robot(cfg, on_tick)
    print()
    inf, jit = summary["inference_ms"], summary["period_jitter_ms"]
    print(
        f"episodes {summary['episodes']}, ticks {summary['ticks']} at {summary['hz']} Hz, "
        f"success {summary['successes']}/{summary['episodes']}"
    )
    if inf:
        print(f"inference ms p50 {inf['p50']:.1f}  p95 {inf['p95']:.1f}  p99 {inf['p99']:.1f}")
    print(
        f"control-period jitter ms p50 {jit['p50']:.2f}  p95 {jit['p95']:.2f}  max {jit['max']:.2f}"
    )
    print(
        f"safety events {summary['safety_events'] or 'none'}; held ticks "
        f"{summary['held_ticks']}; log {summary['log']}"
    )


def main(argv: list[str] | None = None) -> None:
    """The robot loop on a checkpoint (``configs/robot.yaml``; console script s2policy-robot)."""
    from s2policy.hydra_app import run_hydra, schemas

    run_hydra("robot", "robot_run", _run, argv, schemas(robot_schema=RobotRunConfig))


if __name__ == "__main__":
    main()
