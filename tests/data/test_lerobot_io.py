"""LeRobot dataset import/export: the v3.0 layout, round trip, resume, atomic export, bad inputs."""

import io
import json
import shutil
import sys

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pytest.importorskip("av")
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from s2policy.data.formats.lerobot import convert as lerobot_io  # noqa: E402
from s2policy.data.formats.lerobot import reader as lerobot_reader  # noqa: E402
from s2policy.data.formats.lerobot import writer as lerobot_writer  # noqa: E402
from s2policy.data.formats.lerobot.convert import export_lerobot, import_lerobot  # noqa: E402
from s2policy.data.formats.lerobot.format import LeRobotFormatError  # noqa: E402
from s2policy.data.formats.lerobot.video import VideoWriter  # noqa: E402
from s2policy.data.formats.robomimic import check_import_complete  # noqa: E402
from s2policy.data.store import ReplayBuffer  # noqa: E402

#: Mean PSNR of every camera after the round trip (32x32 frames, H.264 crf 18, yuv420p): measured
#: 35.1 dB (front) and 30.4 dB (wrist); yuv420p alone (crf 0) gives 35.7 and 31.0 dB.
MIN_PSNR_DB = 28.0
FRONT = "videos/observation.images.front/chunk-000/file-000.mp4"


@pytest.fixture(scope="module")
def exported(demo_store, tmp_path_factory):
    return export_lerobot(demo_store, tmp_path_factory.mktemp("lerobot") / "cube_pick")


def _copy(exported, tmp_path, mutate=None):
    """A copy of the export, changed by ``mutate(root)``."""
    root = tmp_path / "copy"
    shutil.copytree(exported, root)
    if mutate is not None:
        mutate(root)
    return root


def _psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / mse)


def _info(root):
    return json.loads((root / "meta/info.json").read_text())


def _edit_info(root, **changes):
    info = _info(root)
    info.update(changes)
    (root / "meta/info.json").write_text(json.dumps(info))


def _assert_same_store(orig, back, images_exact=False):
    assert back.keys() == orig.keys() and back.meta_keys() == orig.meta_keys()
    np.testing.assert_array_equal(back.episode_ends, orig.episode_ends)
    cameras = orig.attrs["cameras"]
    for key in orig.keys():
        a, b = orig[key][:], back[key][:]
        assert a.dtype == b.dtype and a.shape == b.shape, key
        if key in cameras and not images_exact:
            assert _psnr(a, b) > MIN_PSNR_DB, key
        else:
            np.testing.assert_array_equal(a, b, err_msg=key)
    for key in orig.meta_keys():
        a, b = orig.get_meta(key), back.get_meta(key)
        assert a.dtype == b.dtype, key
        np.testing.assert_array_equal(a, b, err_msg=key)


def test_zarr_to_lerobot_to_zarr_keeps_every_array(demo_store, exported, tmp_path):
    back = import_lerobot(exported, tmp_path / "back.zarr")
    orig = ReplayBuffer.open(demo_store)
    _assert_same_store(orig, back)
    attrs = back.attrs
    assert attrs.pop(lerobot_io.SOURCE)["path"] == str(exported.resolve())
    assert attrs.pop(lerobot_io.IMPORT_STATE) == {"complete": True, "episodes": orig.n_episodes}
    assert attrs == orig.attrs


def test_export_follows_the_v3_layout(demo_store, exported):
    orig = ReplayBuffer.open(demo_store)
    n, lengths = orig.n_steps, orig.episode_lengths
    info = _info(exported)
    assert set(info) == {
        "codebase_version", "robot_type", "total_episodes", "total_frames", "total_tasks",
        "chunks_size", "data_files_size_in_mb", "video_files_size_in_mb", "fps", "splits",
        "data_path", "video_path", "features",
    }  # fmt: skip
    assert info["codebase_version"] == "v3.0" and info["fps"] == 10
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (6, n, 1)
    assert info["splits"] == {"train": "0:6"}
    features = info["features"]
    assert features["observation.state"] == {
        "dtype": "float32",
        "shape": [5],
        "names": orig.attrs["state_keys"],
    }
    assert features["action"]["shape"] == [5] and features["cube_half"]["shape"] == [1]
    assert features["sim_state"]["dtype"] == "float64"
    front = features["observation.images.front"]
    assert front["dtype"] == "video" and front["shape"] == [32, 32, 3]
    assert front["names"] == ["height", "width", "channels"]
    assert front["info"]["video.codec"] == "h264" and front["info"]["video.pix_fmt"] == "yuv420p"
    assert front["info"]["video.fps"] == 10
    for name in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert features[name]["shape"] == [1]

    data = pq.read_table(exported / "data/chunk-000/file-000.parquet")
    assert set(data.column_names) == {k for k, f in features.items() if f["dtype"] != "video"}
    assert data.schema.field("action").type == pa.list_(pa.float32(), 5)
    assert data.schema.field("cube_half").type == pa.float32()
    assert data.schema.field("timestamp").type == pa.float32()
    np.testing.assert_array_equal(data["index"].to_numpy(), np.arange(n))
    frame_index = np.concatenate([np.arange(k) for k in lengths])
    np.testing.assert_array_equal(data["frame_index"].to_numpy(), frame_index)
    np.testing.assert_allclose(data["timestamp"].to_numpy(), frame_index / 10, rtol=1e-6)
    episode_index = np.repeat(np.arange(6), lengths)
    np.testing.assert_array_equal(data["episode_index"].to_numpy(), episode_index)
    np.testing.assert_array_equal(data["task_index"].to_numpy(), np.zeros(n))

    episodes = pq.read_table(exported / "meta/episodes/chunk-000/file-000.parquet").to_pydict()
    starts = np.r_[0, np.cumsum(lengths)[:-1]]
    assert episodes["episode_index"] == list(range(6))
    assert episodes["length"] == lengths.tolist()
    assert episodes["tasks"] == [["cube_pick"]] * 6
    assert episodes["dataset_from_index"] == starts.tolist()
    assert episodes["dataset_to_index"] == (starts + lengths).tolist()
    np.testing.assert_allclose(
        episodes["videos/observation.images.wrist/from_timestamp"], starts / 10
    )
    np.testing.assert_allclose(
        episodes["videos/observation.images.wrist/to_timestamp"], (starts + lengths) / 10
    )
    assert episodes["data/file_index"] == [0] * 6
    assert episodes["episode_seeds"] == orig.get_meta("episode_seeds").tolist()
    assert episodes["stats/observation.state/mean"][0] == pytest.approx(
        orig["state"][: lengths[0]].mean(0).tolist(), rel=1e-5
    )

    tasks = pq.read_table(exported / "meta/tasks.parquet")
    assert tasks.to_pydict() == {"task_index": [0], "task": ["cube_pick"]}
    pandas = json.loads(tasks.schema.metadata[b"pandas"])
    assert pandas["index_columns"] == ["task"]

    stats = json.loads((exported / "meta/stats.json").read_text())
    assert set(stats["action"]) == {
        "min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99",
    }  # fmt: skip
    np.testing.assert_allclose(stats["action"]["mean"], orig["action"][:].mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats["action"]["std"], orig["action"][:].std(0), rtol=1e-4)
    assert stats["action"]["count"] == [n]
    assert np.asarray(stats["observation.images.front"]["mean"]).shape == (3, 1, 1)
    assert 0 <= np.min(stats["observation.images.front"]["min"]) <= 1
    assert (exported / "meta/s2policy.json").is_file()
    assert not exported.with_name(exported.name + ".partial").exists()


def test_files_roll_over_and_import_back(demo_store, tmp_path):
    out = export_lerobot(demo_store, tmp_path / "small", data_file_mb=1e-6, video_file_mb=1e-6)
    episodes = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pydict()
    assert episodes["data/file_index"] == list(range(6))
    assert episodes["videos/observation.images.front/file_index"] == list(range(6))
    assert episodes["videos/observation.images.front/from_timestamp"] == [0.0] * 6
    assert (out / "data/chunk-000/file-005.parquet").is_file()
    back = import_lerobot(out, tmp_path / "back.zarr")
    _assert_same_store(ReplayBuffer.open(demo_store), back)


def test_foreign_dataset_import_and_resize(demo_store, exported, tmp_path):
    foreign = _copy(exported, tmp_path, lambda root: (root / "meta/s2policy.json").unlink())
    back = import_lerobot(foreign, tmp_path / "foreign.zarr")
    orig = ReplayBuffer.open(demo_store)
    # cube_half (T,): shape [1] features are scalars; task_index: every frame's task
    assert back.keys() == sorted([*orig.keys(), "task_index"])
    np.testing.assert_array_equal(back["task_index"][:], np.zeros(orig.n_steps))
    for key in ("state", "action", "cube_half", "sim_state"):
        np.testing.assert_array_equal(back[key][:], orig[key][:])
    assert back.meta_keys() == ["episode_task"]
    np.testing.assert_array_equal(back.get_meta("episode_task"), np.zeros(6))
    attrs = back.attrs
    assert attrs["cameras"] == ["front", "wrist"] and attrs["action_dim"] == 5
    assert attrs["control_hz"] == 10.0 and attrs["tasks"] == ["cube_pick"]
    assert attrs["image_size"] == [32, 32] and attrs["state_keys"] == orig.attrs["state_keys"]

    small = import_lerobot(foreign, tmp_path / "small.zarr", image_size=[16, 24])
    assert small["front"].shape == (orig.n_steps, 16, 24, 3)
    assert small.attrs["image_size"] == [16, 24]
    ours = import_lerobot(exported, tmp_path / "ours16.zarr", image_size=[16, 16])
    assert ours.attrs["image_size"] == ours.attrs["env"]["image_size"] == [16, 16]
    block_mean = orig["front"][:].reshape(-1, 16, 2, 16, 2, 3).mean(axis=(2, 4))
    assert _psnr(block_mean, ours["front"][:]) > 25


def _png_front(frames):
    """A foreign dataset whose front camera is an ``image`` feature (PNG bytes in the rows)."""
    from PIL import Image

    def mutate(root):
        (root / "meta/s2policy.json").unlink()
        info = _info(root)
        info["features"]["observation.images.front"]["dtype"] = "image"
        (root / "meta/info.json").write_text(json.dumps(info))
        shutil.rmtree(root / "videos/observation.images.front")
        path = root / "data/chunk-000/file-000.parquet"
        png = []
        for frame in frames:
            buf = io.BytesIO()
            Image.fromarray(frame).save(buf, format="PNG")
            png.append({"bytes": buf.getvalue(), "path": None})
        data = pq.read_table(path).append_column("observation.images.front", pa.array(png))
        pq.write_table(data, path)

    return mutate


def test_image_features_are_decoded(demo_store, exported, tmp_path):
    frames = ReplayBuffer.open(demo_store)["front"][:]
    back = import_lerobot(_copy(exported, tmp_path, _png_front(frames)), tmp_path / "back.zarr")
    np.testing.assert_array_equal(back["front"][:], frames)
    assert back.attrs["cameras"] == ["front", "wrist"]


def test_task_strings_are_kept(demo_store, tmp_path):
    orig = ReplayBuffer.open(demo_store)
    tasks = ["pick up the cube", "lift the red cube"]
    store = ReplayBuffer.create(tmp_path / "tasks.zarr", {**orig.attrs, "tasks": tasks})
    for i in range(orig.n_episodes):
        store.add_episode(orig.get_episode(i), {"episode_task": np.int64(i % 2)})
    out = export_lerobot(store.path, tmp_path / "tasks")
    assert pq.read_table(out / "meta/tasks.parquet")["task"].to_pylist() == tasks
    episodes = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pydict()
    assert episodes["tasks"] == [[tasks[i % 2]] for i in range(6)]
    (out / "meta/s2policy.json").unlink()
    back = import_lerobot(out, tmp_path / "back.zarr")
    assert back.attrs["tasks"] == tasks
    np.testing.assert_array_equal(back.get_meta("episode_task"), np.arange(6) % 2)


def test_lowdim_store_without_cameras(tmp_path):
    store = ReplayBuffer.create(tmp_path / "low.zarr", {"control_hz": 7.5, "task": "reach"})
    rng = np.random.default_rng(0)
    for n in (3, 4):
        store.add_episode(
            {"action": rng.normal(size=(n, 2)).astype(np.float32), "q": rng.normal(size=(n, 2, 3))}
        )
    with pytest.raises(ValueError, match=r"whole number of frames per second.*control_hz=7.5"):
        export_lerobot(store.path, tmp_path / "low")
    out = export_lerobot(store.path, tmp_path / "low", fps=15)
    assert _info(out)["video_path"] is None and _info(out)["features"]["q"]["shape"] == [6]
    stats = json.loads((out / "meta/stats.json").read_text())
    np.testing.assert_allclose(stats["q"]["mean"], store["q"][:].reshape(7, 6).mean(0))
    back = import_lerobot(out, tmp_path / "back.zarr")
    np.testing.assert_array_equal(back["q"][:], store["q"][:])  # (T, 2, 3) restored
    empty = ReplayBuffer.create(tmp_path / "empty.zarr", {})
    with pytest.raises(ValueError, match="holds no episodes"):
        export_lerobot(empty.path, tmp_path / "x")


def _v21(exported, demo_store, tmp_path):
    """The export rewritten in the v2.1 layout: one parquet and one mp4 per episode."""
    root = tmp_path / "v21"
    orig = ReplayBuffer.open(demo_store)
    info = _info(exported)
    info.update(
        codebase_version="v2.1",
        total_chunks=1,
        total_videos=12,
        data_path="data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        video_path="videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
    )
    del info["data_files_size_in_mb"], info["video_files_size_in_mb"]
    (root / "meta").mkdir(parents=True)
    (root / "meta/info.json").write_text(json.dumps(info))
    data = pq.read_table(exported / "data/chunk-000/file-000.parquet")
    lines = []
    for i, n in enumerate(orig.episode_lengths):
        rows = data.filter(pc.equal(data["episode_index"], i))
        path = root / info["data_path"].format(episode_chunk=0, episode_index=i)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(rows, path)
        for cam in ("front", "wrist"):
            key = f"observation.images.{cam}"
            path = root / info["video_path"].format(episode_chunk=0, video_key=key, episode_index=i)
            writer = VideoWriter(path, 10, 32, 32, "h264", 18, 2)
            writer.write(orig[cam][orig.episode_slice(i)])
            writer.close()
        lines.append(json.dumps({"episode_index": i, "tasks": ["cube_pick"], "length": int(n)}))
    (root / "meta/episodes.jsonl").write_text("\n".join(lines) + "\n")
    (root / "meta/tasks.jsonl").write_text(json.dumps({"task_index": 0, "task": "cube_pick"}))
    return root


def test_v21_dataset_import(demo_store, exported, tmp_path):
    root = _v21(exported, demo_store, tmp_path)
    back = import_lerobot(root, tmp_path / "v21.zarr")
    orig = ReplayBuffer.open(demo_store)
    np.testing.assert_array_equal(back.episode_ends, orig.episode_ends)
    np.testing.assert_array_equal(back["action"][:], orig["action"][:])
    assert _psnr(orig["wrist"][:], back["wrist"][:]) > MIN_PSNR_DB
    assert back.attrs["tasks"] == ["cube_pick"]


def test_interrupted_import_resumes_to_the_same_store(exported, tmp_path, monkeypatch):
    clean = import_lerobot(exported, tmp_path / "clean.zarr")
    real = lerobot_reader.EpisodeReader.read

    def failing(self, index):
        if index == 3:
            raise KeyboardInterrupt
        return real(self, index)

    monkeypatch.setattr(lerobot_reader.EpisodeReader, "read", failing)
    with pytest.raises(KeyboardInterrupt):
        import_lerobot(exported, tmp_path / "part.zarr")
    part = ReplayBuffer.open(tmp_path / "part.zarr")
    assert part.n_episodes == 3
    assert part.attrs[lerobot_io.IMPORT_STATE] == {"complete": False, "episodes": 6}
    with pytest.raises(ValueError, match=r"part.zarr is an interrupted LeRobot import .*rerun"):
        check_import_complete(part.attrs, tmp_path / "part.zarr")
    monkeypatch.setattr(lerobot_reader.EpisodeReader, "read", real)
    done = import_lerobot(exported, tmp_path / "part.zarr")
    assert done.n_episodes == 6 and done.attrs[lerobot_io.IMPORT_STATE]["complete"] is True
    check_import_complete(done.attrs, tmp_path / "part.zarr")  # no error
    for key in clean.keys():
        np.testing.assert_array_equal(clean[key][:], done[key][:], err_msg=key)
    with pytest.raises(FileExistsError, match="not an interrupted import of the same dataset"):
        import_lerobot(exported, tmp_path / "part.zarr", image_size=[16, 16])


def test_failed_export_leaves_no_partial_dataset(demo_store, exported, tmp_path, monkeypatch):
    with pytest.raises(FileExistsError, match="already exists; pass overwrite=True"):
        export_lerobot(demo_store, exported)
    out = _copy(exported, tmp_path)
    before = (out / "meta/info.json").read_text()
    real = lerobot_writer.DatasetWriter.add_episode

    def failing(self, *args, **kwargs):
        if self.n_episodes == 2:
            raise RuntimeError("disk full")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(lerobot_writer.DatasetWriter, "add_episode", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        export_lerobot(demo_store, tmp_path / "new")
    assert not (tmp_path / "new").exists() and not (tmp_path / "new.partial").exists()
    with pytest.raises(RuntimeError, match="disk full"):
        export_lerobot(demo_store, out, overwrite=True)
    assert (out / "meta/info.json").read_text() == before  # the old dataset, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]


def _drop_state(root):
    (root / "meta/s2policy.json").unlink()
    info = _info(root)
    info["features"]["observation.joints"] = info["features"].pop("observation.state")
    (root / "meta/info.json").write_text(json.dumps(info))


def _drop_action_column(root):
    path = root / "data/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    pq.write_table(table.drop_columns(["action"]), path)


def _longer_episode(root):
    path = root / "meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    lengths = table["length"].to_numpy().copy()
    lengths[2] += 1
    table = table.set_column(table.column_names.index("length"), "length", pa.array(lengths))
    pq.write_table(table, path)
    _edit_info(root, total_frames=int(lengths.sum()))


@pytest.mark.parametrize(
    "mutate, error, match",
    [
        (
            lambda r: _edit_info(r, codebase_version="v1.6"),
            LeRobotFormatError,
            r"codebase_version 'v1.6', which this importer does not know \(it reads v3.x, v2.0",
        ),
        (
            _drop_state,
            LeRobotFormatError,
            r"has no feature observation.state; its features: \['action', .*'observation.joints'\]",
        ),
        (
            lambda r: _edit_info(r, total_frames=5),
            LeRobotFormatError,
            "meta/info.json says total_frames=5 but its episodes table holds 83",
        ),
        (
            _longer_episode,
            LeRobotFormatError,
            "episode 2 has length 14 in the episodes table but 13 rows in",
        ),
        (_drop_action_column, LeRobotFormatError, r"lacks the columns \['action'\]"),
        (
            lambda r: (r / FRONT).unlink(),
            FileNotFoundError,
            "video file .*observation.images.front/chunk-000/file-000.mp4 is missing",
        ),
        (
            lambda r: (r / "meta/info.json").unlink(),
            FileNotFoundError,
            "no LeRobot dataset at .*: meta/info.json is missing",
        ),
    ],
)
def test_bad_datasets_are_one_sentence(exported, tmp_path, mutate, error, match):
    root = _copy(exported, tmp_path, mutate)
    with pytest.raises(error, match=match):
        import_lerobot(root, tmp_path / "out.zarr")


def test_video_shorter_than_its_data(demo_store, exported, tmp_path):
    root = _copy(exported, tmp_path)
    orig = ReplayBuffer.open(demo_store)
    writer = VideoWriter(root / FRONT, 10, 32, 32, "h264", 18, 2)
    writer.write(orig["front"][: orig.n_steps - 2])
    writer.close()
    with pytest.raises(
        LeRobotFormatError,
        match=r"episode 5, observation.images.front: .* has no frame within 0.0001 s of 2 of "
        r"the 15 frame times .* the video and the data rows disagree",
    ):
        import_lerobot(root, tmp_path / "out.zarr")
    assert ReplayBuffer.open(tmp_path / "out.zarr").n_episodes == 5  # a rerun resumes


def test_missing_pyarrow_or_av_is_one_sentence(monkeypatch):
    import s2policy.data.formats.lerobot

    monkeypatch.setitem(sys.modules, "av", None)
    monkeypatch.delitem(sys.modules, "s2policy.data.formats.lerobot.video")
    monkeypatch.delattr(s2policy.data.formats.lerobot, "video")
    with pytest.raises(ImportError, match=r"needs pyarrow and PyAV .*pip install -e .\[lerobot\]"):
        lerobot_io._formats()


def test_cli_round_trip(demo_store, tmp_path, capsys):
    out, zarr = tmp_path / "ds", tmp_path / "back.zarr"
    lerobot_io.main(
        ["action=export", f"src={demo_store}", f"dst={out}", "task_string=pick the cube"]
    )
    lerobot_io.main(["action=import", f"src={out}", f"dst={zarr}", "image_size=[16,16]"])
    printed = capsys.readouterr().out
    assert "6 episodes" in printed and "back.zarr" in printed
    assert pq.read_table(out / "meta/tasks.parquet")["task"].to_pylist() == ["pick the cube"]
    assert ReplayBuffer.open(zarr)["front"].shape[1:] == (16, 16, 3)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["action=upload", "src=a", "dst=b"], "action must be one of ('import', 'export')"),
        (["action=export", "src=a", "dst=b", "image_size=[8,8]"], "['image_size'] do not apply"),
        (["action=import", "src=a", "dst=b", "fps=10"], "['fps'] do not apply to action=import"),
        (["action=export", "src=a", "dst=b", "vcodec=vp9"], "unknown vcodec 'vp9'"),
        (["action=import", "src=a"], "missing mandatory value: dst"),
    ],
)
def test_cli_bad_arguments_are_clear_errors(argv, message, capsys):
    with pytest.raises(SystemExit):
        lerobot_io.main(argv)
    assert message in capsys.readouterr().err


def test_help_shows_the_usage_and_the_keys(capsys):
    with pytest.raises(SystemExit) as exit:
        lerobot_io.main(["--help"])
    out = capsys.readouterr().out
    assert exit.value.code == 0 and out.startswith("s2policy-lerobot: ") and "Usage:" in out
    assert "image_size: null" in out and "vcodec: h264" in out


def test_export_overwrite_replaces_only_our_export(demo_store, exported, tmp_path):
    out = tmp_path / "export"
    shutil.copytree(exported, out)
    export_lerobot(demo_store, out, overwrite=True)  # ours (meta/s2policy.json): replaced
    theirs = tmp_path / "theirs"
    shutil.copytree(exported, theirs)
    (theirs / "meta/s2policy.json").unlink()  # a LeRobot dataset s2policy did not write
    with pytest.raises(FileExistsError, match="not a LeRobot dataset exported by s2policy"):
        export_lerobot(demo_store, theirs, overwrite=True)
    assert (theirs / "meta/info.json").is_file()
