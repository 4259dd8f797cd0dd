"""The Rerun viewer: recordings of a dataset episode and of an evaluation's recorded rollouts,
written through the command and read back entity by entity; bad inputs are one sentence each.
Needs the ``viz`` extra (``make test`` installs it)."""

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from s2policy.data.store import ReplayBuffer
from s2policy.encoders.s2 import EncoderConfig
from s2policy.evaluation.rollout import EvalConfig, evaluate
from s2policy.policies.mlp import MLPPolicyConfig
from s2policy.training.loop import train
from s2policy.viz import VizConfig, main

# The viewer is an optional extra (`make test` installs it); without it these tests are skipped.
pytest.importorskip("rerun")
from rerun.chunk import RrdReader  # noqa: E402

STATE = ["ee_x", "ee_y", "ee_z", "ee_yaw", "gripper_gap"]
ACTION = ["dx", "dy", "dz", "dyaw", "gripper"]


def read_back(path: Path) -> dict[str, dict[str, list]]:
    """entity path -> column name -> values, row by row over the file's chunks (static chunks
    included), of the recording in ``path``; the file must also hold a blueprint."""
    reader = RrdReader(path)
    assert len(reader.recordings()) == 1 and len(reader.blueprints()) == 1
    entities: dict[str, dict[str, list]] = {}
    for chunk in reader.stream():
        columns = entities.setdefault(chunk.entity_path.lstrip("/"), {})
        batch = chunk.to_record_batch()
        for name in batch.schema.names:
            values = batch.column(name).to_pylist()
            if ":" in name:  # a component: one batch per row; mono-components unwrapped
                values = [v[0] if isinstance(v, list) and len(v) == 1 else v for v in values]
            columns.setdefault(name, []).extend(values)
    return entities


def verify_with_the_rerun_cli(path: Path, home: Path) -> None:
    """``rerun rrd verify``: the viewer's own loader reads the file (no analytics: CI=1)."""
    env = {**os.environ, "CI": "1", "HOME": str(home), "XDG_CONFIG_HOME": str(home / "config")}
    cmd = [sys.executable, "-m", "rerun", "rrd", "verify", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_dataset_episode_recording_reads_back(demo_store, tmp_path):
    out = tmp_path / "episode2.rrd"
    main([f"dataset={demo_store}", "episode=2", f"out={out}"])
    got = read_back(out)
    buf = ReplayBuffer.open(demo_store)
    ep = buf.get_episode(2)
    steps = len(ep["action"])
    hz = buf.attrs["control_hz"]
    for cam in ("front", "wrist"):
        images = got[f"episode_002/camera/{cam}"]
        assert images["step"] == list(range(steps))
        seconds = [t.total_seconds() for t in images["time"]]  # timedelta: step / control_hz
        np.testing.assert_allclose(seconds, np.arange(steps) / hz, atol=1e-6)
        frames = np.asarray(images["Image:buffer"], np.uint8).reshape(ep[cam].shape)
        np.testing.assert_array_equal(frames, ep[cam])
    for key, names in (("state", STATE), ("action", ACTION)):
        for d, name in enumerate(names):
            series = got[f"episode_002/{key}/{name}"]
            assert series["step"] == list(range(steps))
            values = np.asarray(series["Scalars:scalars"])
            np.testing.assert_allclose(values, ep[key][:, d], rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(got["episode_002/world/ee"]["Points3D:positions"]).reshape(steps, 3),
        ep["state"][:, :3],
        rtol=1e-6,
    )
    assert len(got["episode_002/world/cube"]["step"]) == steps
    assert "episode_002/data/cube_pos" in got and not any("sim_state" in k for k in got)
    (text,) = got["episode_002/episode"]["TextDocument:text"]
    seed = int(buf.get_meta("episode_seeds")[2])
    assert f"**seed**: {seed}" in text and "**success**: True" in text
    assert got["episode_002/outcome"]["TextLog:text"] == [
        f"episode_002: SUCCESS after {steps} steps"
    ]
    assert got["episode_002/outcome"]["step"] == [steps - 1]
    verify_with_the_rerun_cli(out, tmp_path)


def test_default_output_lies_beside_the_input():
    assert VizConfig(dataset="d/cube.zarr", episode=4).output() == Path("d/cube_episode4.rrd")
    assert VizConfig(dataset="d/cube.zarr").output() == Path("d/cube_episode0.rrd")
    assert VizConfig(rollout="run/eval").output() == Path("run/eval/rollouts.rrd")


@pytest.fixture(scope="module")
def evaluated(demo_store, tmp_path_factory, run_config):
    """An evaluation folder of 3 episodes whose first 2 were recorded: a state-only MLP (fast)
    predicting 5 actions from the current step, 2 executed per chunk."""
    policy = MLPPolicyConfig(horizon=6, n_action_steps=2, hidden_dims=[32], d_feature=16)
    blind = EncoderConfig(backbone="none")
    root = tmp_path_factory.mktemp("viz_eval")
    ckpt = train(run_config(demo_store, root / "run", policy, blind, steps=20))
    cfg = EvalConfig(
        checkpoint=str(ckpt),
        n_episodes=3,
        seed=900,
        n_envs=2,
        n_videos=0,
        n_records=2,
        max_episode_steps=9,
        device="cpu",
        output_dir=str(root / "eval"),
    )
    return root / "eval", evaluate(cfg)


def test_rollout_recording_holds_every_recorded_episode_with_its_chunks(evaluated, tmp_path):
    folder, results = evaluated
    main([f"rollout={folder}"])
    got = read_back(folder / "rollouts.rrd")
    assert {k.split("/")[0] for k in got if k.startswith("episode_")} == {
        "episode_000",
        "episode_001",
    }  # episode 2 was not recorded
    for k in (0, 1):
        p, steps = f"episode_{k:03d}", results["episodes"][k]["steps"]
        assert len(got[f"{p}/camera/front"]["step"]) == steps
        assert len(got[f"{p}/action/gripper"]["Scalars:scalars"]) == steps
        assert len(got[f"{p}/data/success"]["step"]) == steps
        chunk_steps = list(range(0, steps, 2))  # a chunk every 2 executed actions
        assert got[f"{p}/policy/predicted"]["step"] == chunk_steps
        assert got[f"{p}/world/predicted"]["step"] == chunk_steps
        (text,) = got[f"{p}/episode"]["TextDocument:text"]
        assert f"**seed**: {results['episodes'][k]['seed']}" in text
    verify_with_the_rerun_cli(folder / "rollouts.rrd", tmp_path)

    main([f"rollout={folder}", "max_episodes=1", f"out={tmp_path / 'first.rrd'}"])
    assert {k.split("/")[0] for k in read_back(tmp_path / "first.rrd")} >= {"episode_000"}
    assert not any(k.startswith("episode_001") for k in read_back(tmp_path / "first.rrd"))
    main([f"rollout={folder}", "episode=1", f"out={tmp_path / 'second.rrd'}"])
    assert not any(k.startswith("episode_000") for k in read_back(tmp_path / "second.rrd"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_web_mode_serves_the_viewer_until_ctrl_c(demo_store, tmp_path):
    web, grpc = _free_port(), _free_port()
    while grpc == web:
        grpc = _free_port()
    cmd = [sys.executable, "-m", "s2policy.viz", f"dataset={demo_store}", "mode=web"]
    proc = subprocess.Popen(
        [*cmd, f"web_port={web}", f"grpc_port={grpc}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "CI": "1", "HOME": str(tmp_path)},
    )
    try:
        lines = []
        while not any("serving the viewer" in line for line in lines) and proc.poll() is None:
            lines.append(proc.stdout.readline())  # printed once the episode is logged
        assert proc.poll() is None, "".join(lines)[-3000:]
        assert urllib.request.urlopen(f"http://127.0.0.1:{web}/", timeout=30).status == 200
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out[-2000:]
    assert f"serving the viewer at http://localhost:{web}/?url=rerun%2Bhttp" in "".join(lines)
    assert list(tmp_path.iterdir()) == []  # nothing written


def _error(capsys, *args) -> str:
    with pytest.raises(SystemExit) as exit:
        main(list(args))
    assert exit.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_bad_inputs_are_one_sentence(demo_store, evaluated, tmp_path, capsys):
    folder, _ = evaluated
    assert "episode 99 out of range" in _error(capsys, f"dataset={demo_store}", "episode=99")
    assert "neither was given" in _error(capsys)
    assert "both were given" in _error(capsys, f"dataset={demo_store}", f"rollout={folder}")
    assert "unknown mode 'movie'" in _error(capsys, f"dataset={demo_store}", "mode=movie")
    assert "max_episodes" in _error(capsys, f"dataset={demo_store}", "max_episodes=2")
    assert "out= is the file of mode=save" in _error(
        capsys, f"dataset={demo_store}", "mode=web", "out=x.rrd"
    )
    assert "results.json does not exist" in _error(capsys, f"rollout={tmp_path}")
    (tmp_path / "results.json").write_text(
        json.dumps({"episodes": [{"seed": 1, "success": False, "steps": 3}]})
    )
    assert "holds no recorded episodes; evaluate with n_records" in _error(
        capsys, f"rollout={tmp_path}"
    )
    assert "episode 2 of" in _error(capsys, f"rollout={folder}", "episode=2")
    assert list(tmp_path.iterdir()) == [tmp_path / "results.json"]  # nothing written


def test_without_rerun_the_command_says_what_to_install(demo_store, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "rerun", None)  # import rerun -> ImportError
    err = _error(capsys, f"dataset={demo_store}", "out=never.rrd")
    assert err == "error: the viewer needs the optional dependency rerun-sdk: pip install -e .[viz]"
