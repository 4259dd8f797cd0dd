import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from s2policy.data.store import ReplayBuffer
from s2policy.evaluation import rollout
from s2policy.evaluation.rollout import EvalConfig, evaluate
from s2policy.policies.artifact import load
from s2policy.policies.mlp import MLPPolicyConfig
from s2policy.policies.runner import PolicyRunner
from s2policy.robot.loop import InferenceLoop, LoopConfig
from s2policy.robot.run import RobotRunConfig, check_robot, run_robot
from s2policy.robot.safety import SafetyConfig, SafetyFilter
from s2policy.robot.sim_robot import SimRobot
from s2policy.robot.worker import SimulatedLatencyWorker
from s2policy.task import TaskConfig
from s2policy.training.loop import train

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ckpt(demo_store, tmp_path_factory, run_config):
    policy = MLPPolicyConfig(horizon=8, n_action_steps=4, hidden_dims=[64], d_feature=32)
    # 300 steps: enough to succeed on some of its demonstrations' seeds (0, ..., 5), so that
    # comparing the robot loop with evaluation compares successes and failures.
    out = tmp_path_factory.mktemp("robot")
    return train(
        run_config(demo_store, out, policy, steps=300, val_every=300, ckpt_every=300, log_every=100)
    )


def test_sim_robot_follows_the_interface():
    robot = SimRobot(TaskConfig(env={"image_size": (16, 16), "shadow_size": 0}))
    robot.reset(seed=3)
    first = robot.observe()
    assert first["front"].shape == (16, 16, 3) and first["state"].shape == (5,)
    robot.act(np.array([1.0, 0, 0, 0, 1.0], np.float32))
    moved = robot.observe()
    assert moved["timestamp"] >= first["timestamp"] and moved["state"][0] > first["state"][0]
    robot.hold()
    assert robot.observe()["state"][4] < first["state"][4]  # hold keeps the gripper closing
    assert robot.status() == {"success": False, "done": False}
    assert robot.spec()["action_dim"] == 5


def replay(task: TaskConfig, seed: int, episode: dict, max_ticks: int) -> tuple[np.ndarray, bool]:
    """Replay a logged robot episode on a fresh simulation: the states the robot should have
    observed at each tick, and whether the episode succeeded (its ticks, then the final hold of
    ``run_episode``). Held ticks sent a hold: no motion, the previous gripper command."""
    env = task.make_env(max_ticks, terminate_on_success=False)
    try:
        obs, _ = env.reset(seed=seed)
        states, success, grip = [], False, -1.0
        for action, held in zip(episode["action"], episode["held"], strict=True):
            states.append(obs["state"])
            if held:
                action = np.zeros_like(action)
                action[-1] = grip
            grip = float(action[-1])
            obs, _, _, _, info = env.step(action)
            success = success or bool(info["success"])
        still = np.zeros_like(episode["action"][0])
        still[-1] = grip
        success = success or bool(env.step(still)[-1]["success"])
        return np.stack(states), success
    finally:
        env.close()


def test_sim_robot_run_at_10_hz_reports_success_and_logs(ckpt, tmp_path):
    cfg = RobotRunConfig(
        checkpoint=str(ckpt), episodes=2, max_ticks=12, hz=10, device="cpu", log_dir=str(tmp_path)
    )
    summary = run_robot(cfg)
    assert summary["episodes"] == 2 and summary["ticks"] <= 24 and summary["hz"] == 10
    assert summary["inference_ms"]["p50"] > 0 and summary["period_jitter_ms"]["p95"] < 100
    buf = ReplayBuffer.open(summary["log"])
    assert buf.n_episodes == 2 and buf.attrs["control_hz"] == 10
    stamps = buf.get_episode(0)["tick_time"]
    assert np.median(np.diff(stamps)) == pytest.approx(0.1, abs=0.03)  # real time, 10 Hz
    assert list(tmp_path.glob("*_summary.json"))
    # The log is what happened: replaying each episode's sent actions from its seed gives the
    # logged states tick by tick, and the successes the summary and the log report.
    task = load(ckpt).task
    assert list(buf.get_meta("episode_seeds")) == [cfg.seed, cfg.seed + 1]
    replayed = []
    for i in range(2):
        episode = buf.get_episode(i)
        states, success = replay(task, cfg.seed + i, episode, cfg.max_ticks)
        np.testing.assert_array_equal(episode["state"], states, err_msg=f"episode {i}")
        assert bool(buf.get_meta("episode_success")[i]) == success
        replayed.append(success)
    assert summary["successes"] == sum(replayed)


class SteppingClock:
    """A fake clock that moves 1 us at every reading (so that two observations never share a
    timestamp) and jumps on ``sleep``: the loop runs at its exact rate, without real time."""

    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        self.t += 1e-6
        return self.t

    def sleep(self, dt):
        self.t += max(0.0, dt)


class RecordingRunner(PolicyRunner):
    """A PolicyRunner that remembers the state of every observation it is given, per episode
    (by seed): the closed loop it ran."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.states: dict[int, list[np.ndarray]] = {}

    def observe(self, i, obs):
        if not self.histories[i]:  # the episode's first observation (idle slots get none)
            self.states[self.seeds[i]] = []
        self.states[self.seeds[i]].append(np.array(obs["state"]))
        super().observe(i, obs)


def test_robot_loop_reproduces_evaluation_when_inference_serves_the_current_tick(
    ckpt, tmp_path, monkeypatch
):
    """README: with inference serving the tick it was asked at and safety limits that do not
    bind, the robot loop on a SimRobot is the evaluation: same success, same steps, same states
    tick by tick (simulated zero latency on a fake clock: deterministic)."""
    seeds = [0, 2, 4]  # demonstration seeds: the policy succeeds on some of them
    trained = load(ckpt)
    task = trained.task
    limit = 30  # the step limit of both (the task's 80 would only take longer)
    made: list[RecordingRunner] = []

    def recording(*args, **kw):
        made.append(RecordingRunner(*args, **kw))
        return made[-1]

    monkeypatch.setattr(rollout, "PolicyRunner", recording)
    results = evaluate(
        EvalConfig(
            checkpoint=str(ckpt),
            seeds=seeds,
            n_envs=1,
            n_videos=0,
            max_episode_steps=limit,
            device="cpu",
            output_dir=str(tmp_path / "eval"),
        ),
        trained=trained,
    )
    evaluated = {e["seed"]: (e["success"], e["steps"]) for e in results["episodes"]}
    assert results["eval"]["max_episode_steps"] == limit and list(evaluated) == seeds
    outcomes = {success for success, _ in evaluated.values()}
    assert outcomes == {True, False}, f"retrain or pick other seeds: {evaluated}"

    clock = SteppingClock()
    robot = SimRobot(task, clock, max_episode_steps=limit)
    runner = RecordingRunner(trained, 1, "cpu", infer_when_remaining=0)
    wide = SafetyConfig(
        workspace_low=(-10.0, -10.0, -10.0),
        workspace_high=(10.0, 10.0, 10.0),
        max_step_m=10.0,
        max_yaw_step_rad=10.0,
        max_obs_age_s=10.0,
    )
    first_success: dict[int, int] = {}
    done_at: dict[int, int] = {}

    def on_tick(report):
        status = robot.status()
        if status["success"] and report.seed not in first_success:
            first_success[report.seed] = report.ticks
        if status["done"]:
            done_at[report.seed] = report.ticks

    loop = InferenceLoop(
        SimulatedLatencyWorker(runner.chunk_fn(), clock, 0.0),
        robot,
        LoopConfig(task.env.control_hz, limit),
        runner,
        SafetyFilter(wide, robot.spec()),
        clock=clock,
        sleep=clock.sleep,
        on_tick=on_tick,
    )
    try:
        reports = {seed: loop.run_episode(seed) for seed in seeds}
    finally:
        robot.close()
    for seed in seeds:
        report = reports[seed]
        # Limits never bound, no tick was held, no action was skipped; the robot ends its
        # episode at the step limit (it does not stop at success).
        assert report.held_ticks == 0 and not report.events and report.skipped_actions == 0
        assert report.ticks == limit and done_at[seed] == limit
        steps = first_success.get(seed, limit)
        assert (report.success, steps) == evaluated[seed], seed
        # The same closed loop: identical observed states up to where evaluation stopped.
        played, robot_states = made[0].states[seed], runner.states[seed]
        assert len(played) == steps and len(robot_states) == limit
        np.testing.assert_array_equal(np.stack(robot_states[:steps]), np.stack(played))


def test_robot_that_does_not_match_the_checkpoint(ckpt):
    trained = load(ckpt)
    spec = {"cameras": ["front"], "image_size": [32, 32], "action_dim": 4}
    with pytest.raises(
        ValueError, match=r"cameras \['wrist'\] missing.*action size 4 instead of 5"
    ):
        check_robot(spec, trained)


def test_cli(ckpt, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "s2policy.robot.run",
            f"checkpoint={ckpt}",
            "episodes=1",
            "max_ticks=5",
            "device=cpu",
            f"log_dir={tmp_path}",
            f"hydra.run.dir={tmp_path}/h",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "control-period jitter ms" in proc.stdout and "success" in proc.stdout
