"""Datasets that LeRobot itself writes (tests/data/conftest.py builds them as lerobot 0.4.4 and
0.3.3 do) import exactly: episode ends, vectors bit-exact, per-frame tasks (a task that changes
within an episode), the image camera lossless, the video camera as decoded, and every
``observation.*`` feature keeps its LeRobot name through a re-export."""

import json

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
av = pytest.importorskip("av")
import pyarrow.parquet as pq  # noqa: E402

from s2policy.data.formats.lerobot.convert import export_lerobot, import_lerobot  # noqa: E402

TOP = "observation.images.top"


def decoded(path):
    """Every frame of an mp4 decoded in order (PyAV, rgb24), with its time in seconds."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return [(float(f.pts * f.time_base), f.to_ndarray(format="rgb24")) for f in c.decode(s)]


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / mse)


def check_import(buf, episodes, videos):
    """``videos``: per episode, the frames of its video as decoded from the file."""
    assert list(buf.episode_lengths) == [len(e.action) for e in episodes]
    tasks = buf.attrs["tasks"]
    for i, e in enumerate(episodes):
        ep = buf.get_episode(i)
        np.testing.assert_array_equal(ep["state"], e.state)
        np.testing.assert_array_equal(ep["action"], e.action)
        np.testing.assert_array_equal(ep["environment_state"], e.env_state)
        np.testing.assert_array_equal(ep["wrist"], e.wrist)  # PNG: lossless
        assert [tasks[k] for k in ep["task_index"]] == e.tasks  # per frame, changes included
        np.testing.assert_array_equal(ep["top"], videos[i])  # what the decoder gives
        assert psnr(ep["top"], e.top) > 25  # and close to what was recorded (AV1 crf 30)
    assert buf.get_meta("episode_task").tolist() == [tasks.index(e.tasks[0]) for e in episodes]
    names = buf.attrs["lerobot_names"]
    assert names["environment_state"] == "observation.environment_state"
    assert names["top"] == TOP and names["state"] == "observation.state"
    assert buf.attrs["state_keys"] == [f"joint{i}" for i in range(7)] + ["gripper"]


def test_a_dataset_written_by_lerobot_0_4_imports_exactly(lerobot_v30, upstream_episodes, tmp_path):
    table = pq.read_table(lerobot_v30 / "meta/tasks.parquet")
    assert table.column_names == ["task_index", "__index_level_0__"]  # LeRobot's unnamed index
    frames = decoded(lerobot_v30 / f"videos/{TOP}/chunk-000/file-000.mp4")
    starts = np.cumsum([0] + [len(e.action) for e in upstream_episodes])
    videos = [
        np.stack([f for _, f in frames[starts[i] : starts[i + 1]]])
        for i in range(len(upstream_episodes))
    ]
    buf = import_lerobot(lerobot_v30, tmp_path / "v30.zarr")
    check_import(buf, upstream_episodes, videos)


def test_a_dataset_written_by_lerobot_0_3_imports_exactly(lerobot_v21, upstream_episodes, tmp_path):
    videos = [
        np.stack(
            [f for _, f in decoded(lerobot_v21 / f"videos/chunk-000/{TOP}/episode_{i:06d}.mp4")]
        )
        for i in range(len(upstream_episodes))
    ]
    buf = import_lerobot(lerobot_v21, tmp_path / "v21.zarr")
    check_import(buf, upstream_episodes, videos)


def test_a_reexport_keeps_lerobot_names_and_per_frame_tasks(lerobot_v30, tmp_path):
    buf = import_lerobot(lerobot_v30, tmp_path / "v30.zarr")
    out = export_lerobot(buf.path, tmp_path / "again")
    features = json.loads((out / "meta/info.json").read_text())["features"]
    for name in (TOP, "observation.images.wrist", "observation.state",
                 "observation.environment_state", "action"):  # fmt: skip
        assert name in features, sorted(features)
    assert "environment_state" not in features
    data = pq.read_table(out / "data/chunk-000/file-000.parquet")
    np.testing.assert_array_equal(data["task_index"].to_numpy(), buf["task_index"][:])
    back = import_lerobot(out, tmp_path / "back.zarr")
    assert back.attrs["tasks"] == buf.attrs["tasks"]
    np.testing.assert_array_equal(back["task_index"][:], buf["task_index"][:])
    np.testing.assert_array_equal(back["environment_state"][:], buf["environment_state"][:])
