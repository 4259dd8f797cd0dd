import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from s2policy.data.replay_buffer import ReplayBuffer
from s2policy.policies.artifact import load
from s2policy.policies.mlp import MLPPolicyConfig
from s2policy.robot.run import RobotRunConfig, check_robot, run_robot
from s2policy.robot.sim_robot import SimRobot
from s2policy.task import TaskConfig
from s2policy.training.loop import train

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ckpt(demo_store, tmp_path_factory, run_config):
    policy = MLPPolicyConfig(horizon=8, n_action_steps=4, hidden_dims=[64], d_feature=32)
    return train(run_config(demo_store, tmp_path_factory.mktemp("robot"), policy, steps=60))


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


def test_sim_robot_run_at_10_hz_reports_success_and_logs(ckpt, tmp_path):
    cfg = RobotRunConfig(
        checkpoint=str(ckpt), episodes=2, max_ticks=12, hz=10, device="cpu", log_dir=str(tmp_path)
    )
    summary = run_robot(cfg)
    assert summary["episodes"] == 2 and summary["ticks"] <= 24
    assert summary["successes"] in (0, 1, 2) and summary["hz"] == 10
    assert summary["inference_ms"]["p50"] > 0 and summary["period_jitter_ms"]["p95"] < 100
    buf = ReplayBuffer.open(summary["log"])
    assert buf.n_episodes == 2 and buf.attrs["control_hz"] == 10
    stamps = buf.get_episode(0)["tick_time"]
    assert np.median(np.diff(stamps)) == pytest.approx(0.1, abs=0.03)  # real time, 10 Hz
    assert list(tmp_path.glob("*_summary.json"))


def test_robot_that_does_not_match_the_checkpoint(ckpt):
    trained = load(ckpt)
    spec = {"cameras": ["front"], "image_size": [32, 32], "action_dim": 4}
    with pytest.raises(ValueError, match=r"cameras \['wrist'\] missing.*action dim 4 != 5"):
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
