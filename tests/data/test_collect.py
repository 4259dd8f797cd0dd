import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from envs.randomization import Randomization
from s2policy.data.collect import CollectConfig, collect_demos
from s2policy.data.store import ReplayBuffer
from s2policy.task import TaskConfig

ROOT = Path(__file__).resolve().parents[2]
SMALL_ENV = {"image_size": (24, 24), "shadow_size": 0}


def small_cfg(tmp_path, **kw):
    task = TaskConfig(env=SMALL_ENV)
    return CollectConfig(task=task, output=str(tmp_path / "demo.zarr"), **kw)


def assert_stores_equal(a: ReplayBuffer, b: ReplayBuffer):
    assert a.keys() == b.keys() and a.n_episodes == b.n_episodes
    np.testing.assert_array_equal(a.episode_ends, b.episode_ends)
    for key in a.keys():
        np.testing.assert_array_equal(a[key][:], b[key][:])
    np.testing.assert_array_equal(a.get_meta("episode_seeds"), b.get_meta("episode_seeds"))


def test_collect_writes_a_replay_buffer(tmp_path):
    results = []
    buf = collect_demos(small_cfg(tmp_path, n_episodes=3, seed=5), on_episode=results.append)
    assert buf.n_episodes == 3
    assert set(buf.keys()) == {
        "front",
        "wrist",
        "state",
        "action",
        "cube_pos",
        "cube_quat",
        "cube_yaw",
        "cube_half",
        "sim_state",
    }
    assert buf["front"].shape[1:] == (24, 24, 3) and buf["action"].shape[1:] == (5,)
    np.testing.assert_array_equal(buf.get_meta("episode_seeds"), [5, 6, 7])
    assert buf.get_meta("episode_success").all()
    attrs = buf.attrs
    assert attrs["task"] == "cube_pick" and attrs["control_hz"] == 10
    assert attrs["cameras"] == ["front", "wrist"] and attrs["env"]["image_size"] == [24, 24]
    assert [r.seed for r in results] == [5, 6, 7]
    assert np.abs(buf["action"][:]).max() <= 1.0


def test_collect_appends_with_continuing_seeds_and_matches_one_run(tmp_path):
    collect_demos(small_cfg(tmp_path, n_episodes=2))
    buf = collect_demos(small_cfg(tmp_path, n_episodes=4))
    np.testing.assert_array_equal(buf.get_meta("episode_seeds"), [0, 1, 2, 3])
    one_run = collect_demos(small_cfg(tmp_path / "b", n_episodes=4))
    assert_stores_equal(ReplayBuffer.open(buf.path), one_run)


def test_collect_refuses_a_store_made_with_other_settings(tmp_path):
    collect_demos(small_cfg(tmp_path, n_episodes=1))
    cfg = small_cfg(tmp_path, n_episodes=2)
    cfg.task.env.image_size = (32, 32)
    with pytest.raises(ValueError, match="other settings.*image_size.*overwrite=true"):
        collect_demos(cfg)
    cfg.overwrite = True
    assert collect_demos(cfg).n_episodes == 2


def test_demonstrations_of_another_expert_version_are_not_appended(tmp_path, monkeypatch):
    """The place/stack expert changed (version 2: it lifts when the gripper gap settles): a store
    of another version's episodes is refused; a store written before versions were stored counts
    as version 1 (cube pick's expert still is)."""
    import zarr

    from envs.expert import PlaceExpert

    cfg = small_cfg(tmp_path, n_episodes=1)
    assert collect_demos(cfg).attrs["expert_version"] == 1
    del zarr.open_group(cfg.output, mode="a").attrs["expert_version"]
    cfg.n_episodes = 2
    assert collect_demos(cfg).n_episodes == 2
    cfg = small_cfg(tmp_path / "place", n_episodes=1)
    cfg.task.name = "place"
    monkeypatch.setattr(PlaceExpert, "version", 1)
    collect_demos(cfg)
    monkeypatch.setattr(PlaceExpert, "version", 2)
    cfg.n_episodes = 2
    with pytest.raises(ValueError, match="expert_version: store has 1, config has 2"):
        collect_demos(cfg)


def test_keep_failed_and_giving_up(tmp_path):
    cfg = small_cfg(tmp_path, n_episodes=2, keep_failed=True)
    cfg.task.max_episode_steps = 3  # too short for the expert: every episode fails
    buf = collect_demos(cfg)
    assert buf.n_episodes == 2 and not buf.get_meta("episode_success").any()
    cfg = small_cfg(tmp_path / "b", n_episodes=2, max_attempts=3)
    cfg.task.max_episode_steps = 3
    with pytest.raises(RuntimeError, match="succeeded too rarely: 0/2 episodes after 3 attempts"):
        collect_demos(cfg)


@pytest.mark.parametrize(
    "kw, match",
    [({"n_episodes": 0}, "n_episodes"), ({"expert_noise": -1.0}, "expert_noise")],
)
def test_bad_collect_config(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        small_cfg(tmp_path, **kw)
    with pytest.raises(ValueError, match="unknown task 'cube_pik'"):
        TaskConfig(name="cube_pik")


def collect_cmd(out, n):
    return [
        sys.executable,
        str(ROOT / "collect_demos.py"),
        f"output={out}",
        f"n_episodes={n}",
        "task.env.image_size=[24,24]",
        "task.env.shadow_size=0",
        "hydra.run.dir=" + str(out) + "_log",
    ]


@pytest.mark.slow
def test_killed_collection_leaves_a_consistent_store_and_resumes(tmp_path):
    out, n = tmp_path / "killed.zarr", 30
    proc = subprocess.Popen(
        collect_cmd(out, n), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (out / "meta" / "episode_ends").exists() and ReplayBuffer.open(out).n_episodes >= 3:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = ReplayBuffer.open(out)
    assert 3 <= partial.n_episodes < n, "collection ended before it could be killed"
    for key in partial.keys():  # every committed step is readable
        assert len(partial[key][:]) == partial.n_steps
    subprocess.run(collect_cmd(out, n), cwd=ROOT, check=True, capture_output=True)
    resumed = ReplayBuffer.open(out)
    assert resumed.n_episodes == n
    subprocess.run(
        collect_cmd(tmp_path / "clean.zarr", n), cwd=ROOT, check=True, capture_output=True
    )
    assert_stores_equal(resumed, ReplayBuffer.open(tmp_path / "clean.zarr"))


def test_config_typo_fails_at_start(tmp_path):
    cmd = collect_cmd(tmp_path / "x.zarr", 1) + ["task.env.imag_size=[8,8]"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "imag_size" in proc.stderr and not (tmp_path / "x.zarr").exists()


def test_collect_with_randomization_records_it_and_other_tasks_work(tmp_path):
    heldout = {"name": "custom", "light_scale": (0.5, 0.6), "object_scale": (1.1, 1.15)}
    cfg = CollectConfig(
        task=TaskConfig("push", env={"image_size": (24, 24), "shadow_size": 0}),
        n_episodes=2,
        output=str(tmp_path / "push.zarr"),
        randomization=heldout,
    )
    buf = collect_demos(cfg)
    attrs = buf.attrs
    assert attrs["task"] == "push" and attrs["env_id"] == "s2policy/Push-v0"
    assert attrs["env"]["randomization"]["name"] == "custom"
    assert attrs["env"]["randomization"]["light_scale"] == [0.5, 0.6]
    assert {"goal_pos", "cube_pos", "cube_half"} <= set(buf.keys())
    half = buf["cube_half"][:]
    assert (half >= 0.02 * 1.1 - 1e-6).all() and (half <= 0.02 * 1.15 + 1e-6).all()
    # Appending with other randomization settings is refused: the store would mix conditions.
    cfg.randomization = Randomization(name="off")
    cfg.task.env.randomization = cfg.randomization
    cfg.n_episodes = 3
    with pytest.raises(ValueError, match="collected with other settings"):
        collect_demos(cfg)


def test_stored_sim_states_replay_the_recorded_frames(tmp_path):
    buf = collect_demos(small_cfg(tmp_path, n_episodes=1))
    env = TaskConfig(env=SMALL_ENV).make_env()
    env.reset(seed=int(buf.get_meta("episode_seeds")[0]))
    raw = env.unwrapped
    for t in range(len(buf["action"])):
        raw.set_sim_state(buf["sim_state"][t])
        obs = raw._observation()
        np.testing.assert_array_equal(obs["state"], buf["state"][t])
        np.testing.assert_array_equal(raw.sim_state(), buf["sim_state"][t])
        # A recorded frame shows the bodies as of the last physics substep's start (mj_step
        # renders kinematics before integrating); the restored one is 2 ms later: a few pixels
        # of a moving object may differ.
        differ = (obs["front"] != buf["front"][t]).any(-1).mean()
        assert differ < 0.02, (t, differ)
    with pytest.raises(ValueError, match="sim state must have shape"):
        raw.set_sim_state(np.zeros(3))
