"""robomimic hdf5 import/export: documented layout, round trip, bad inputs, robomimic's reader."""

import json

import h5py
import numpy as np
import pytest

from s2policy.data.formats import robomimic as robomimic_io
from s2policy.data.formats.robomimic import RobomimicFormatError, export_robomimic, import_robomimic
from s2policy.data.store import ReplayBuffer

LENGTHS = [7, 5, 9]


def write_robomimic(path, lengths=LENGTHS, mutate=None):
    """A file in robomimic's documented layout, as its dataset converters write it."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        for i, n in enumerate(lengths):
            demo = data.create_group(f"demo_{i}")
            demo.attrs["num_samples"] = n
            demo.create_dataset("actions", data=rng.uniform(-1, 1, (n, 7)))
            demo.create_dataset("rewards", data=np.r_[np.zeros(n - 1), 1.0])
            demo.create_dataset("dones", data=np.r_[np.zeros(n - 1), 1].astype(np.int64))
            demo.create_dataset("states", data=rng.normal(size=(n, 32)))
            obs = demo.create_group("obs")
            obs.create_dataset(
                "agentview_image", data=rng.integers(0, 255, (n, 12, 16, 3), np.uint8)
            )
            obs.create_dataset("robot0_eef_pos", data=rng.normal(size=(n, 3)))
            obs.create_dataset("robot0_gripper_qpos", data=rng.normal(size=(n, 2)))
            obs.create_dataset("object", data=rng.normal(size=(n, 10)))
            nxt = demo.create_group("next_obs")
            for key in obs:
                nxt.create_dataset(key, data=obs[key][()])
        data.attrs["total"] = sum(lengths)
        data.attrs["env_args"] = json.dumps(
            {"env_name": "Lift", "type": 1, "env_kwargs": {"control_freq": 20}}
        )
        mask = f.create_group("mask")
        mask.create_dataset("train", data=np.array([b"demo_0", b"demo_2"]))
        mask.create_dataset("valid", data=np.array([b"demo_1"]))
        if mutate is not None:
            mutate(f)
    return path


def test_import_follows_the_documented_layout(tmp_path):
    src = write_robomimic(tmp_path / "lift.hdf5")
    buf = import_robomimic(
        src, tmp_path / "lift.zarr", state_keys=["robot0_eef_pos", "robot0_gripper_qpos"]
    )
    assert buf.n_episodes == 3 and buf.n_steps == sum(LENGTHS)
    np.testing.assert_array_equal(buf.episode_ends, np.cumsum(LENGTHS))
    assert set(buf.keys()) == {
        "agentview",
        "robot0_eef_pos",
        "robot0_gripper_qpos",
        "object",
        "state",
        "action",
        "sim_state",
        "reward",
        "done",
    }
    with h5py.File(src) as f:
        demo = f["data/demo_1"]
        ep = buf.get_episode(1)
        np.testing.assert_array_equal(ep["agentview"], demo["obs/agentview_image"][()])
        np.testing.assert_array_equal(ep["action"], demo["actions"][()])
        np.testing.assert_array_equal(ep["sim_state"], demo["states"][()])
        np.testing.assert_array_equal(ep["done"], demo["dones"][()])
        expected_state = np.hstack(
            [demo["obs/robot0_eef_pos"][()], demo["obs/robot0_gripper_qpos"][()]]
        )
        np.testing.assert_allclose(ep["state"], expected_state, rtol=1e-6)
    attrs = buf.attrs
    assert attrs["cameras"] == ["agentview"] and attrs["action_dim"] == 7
    assert attrs["robomimic_source"]["env_args"]["env_name"] == "Lift"


def test_filter_key_and_obs_key_selection(tmp_path):
    src = write_robomimic(tmp_path / "lift.hdf5")
    buf = import_robomimic(src, tmp_path / "train.zarr", obs_keys=["object"], filter_key="train")
    assert buf.n_episodes == 2
    np.testing.assert_array_equal(buf.episode_lengths, [LENGTHS[0], LENGTHS[2]])
    assert set(buf.keys()) == {"object", "action", "sim_state", "reward", "done"}
    with pytest.raises(
        RobomimicFormatError, match=r"no filter key mask/test.*\['train', 'valid'\]"
    ):
        import_robomimic(src, tmp_path / "x.zarr", filter_key="test")


def test_zarr_to_hdf5_to_zarr_is_identical(demo_store, tmp_path):
    h5 = export_robomimic(demo_store, tmp_path / "demo.hdf5")
    back = import_robomimic(h5, tmp_path / "back.zarr")
    orig = ReplayBuffer.open(demo_store)
    assert back.keys() == orig.keys() and back.meta_keys() == orig.meta_keys()
    np.testing.assert_array_equal(back.episode_ends, orig.episode_ends)
    for key in orig.keys():
        a, b = orig[key][:], back[key][:]
        assert a.dtype == b.dtype, key
        np.testing.assert_array_equal(a, b, err_msg=key)
    for key in orig.meta_keys():
        a = orig.get_meta(key) if key != "episode_ends" else orig.episode_ends
        b = back.get_meta(key) if key != "episode_ends" else back.episode_ends
        assert a.dtype == b.dtype, key
        np.testing.assert_array_equal(a, b, err_msg=key)
    attrs = back.attrs
    assert attrs.pop("robomimic_source")["path"] == str(h5.resolve())
    assert attrs.pop(robomimic_io.IMPORT_STATE) == {"complete": True, "demos": orig.n_episodes}
    assert attrs == orig.attrs


def test_export_follows_the_documented_layout(demo_store, tmp_path):
    h5 = export_robomimic(demo_store, tmp_path / "demo.hdf5", valid_ratio=0.34)
    orig = ReplayBuffer.open(demo_store)
    with h5py.File(h5) as f:
        data = f["data"]
        assert data.attrs["total"] == orig.n_steps
        env_args = json.loads(data.attrs["env_args"])
        assert env_args["env_name"] == "s2policy/CubePick-v0" and env_args["type"] == 2
        assert env_args["env_kwargs"]["image_size"] == [32, 32]
        assert sorted(data) == [f"demo_{i}" for i in range(orig.n_episodes)]
        demo = data["demo_0"]
        n = orig.episode_lengths[0]
        assert demo.attrs["num_samples"] == n
        assert demo["obs/front_image"].shape == (n, 32, 32, 3)
        assert demo["obs/front_image"].dtype == np.uint8
        assert demo["obs/state"].shape == (n, 5) and demo["actions"].shape == (n, 5)
        np.testing.assert_array_equal(demo["next_obs/state"][:-1], demo["obs/state"][1:])
        assert demo["states"].shape[0] == n
        assert demo["rewards"][-1] == 1.0 and demo["rewards"][:-1].sum() == 0
        assert demo["dones"][-1] == 1 and demo["dones"][:-1].sum() == 0
        train, valid = _names(f["mask/train"]), _names(f["mask/valid"])
        assert len(valid) == 2 and not set(train) & set(valid)
        assert sorted(train + valid) == sorted(data)
    assert not (tmp_path / "demo.hdf5.partial").exists()
    with pytest.raises(FileExistsError, match="already exists"):
        export_robomimic(demo_store, h5)


def _names(dataset):
    return [n.decode() for n in dataset[()]]


def test_robomimic_sequence_dataset_reads_our_export(demo_store, tmp_path):
    pytest.importorskip("six")
    ObsUtils = pytest.importorskip("robomimic.utils.obs_utils")
    from robomimic.utils.dataset import SequenceDataset

    h5 = export_robomimic(demo_store, tmp_path / "demo.hdf5", next_obs=False)
    ObsUtils.initialize_obs_utils_with_obs_specs(
        {"obs": {"low_dim": ["state"], "rgb": ["front_image"]}}
    )
    dataset = SequenceDataset(
        hdf5_path=str(h5),
        obs_keys=("state", "front_image"),
        dataset_keys=("actions", "rewards", "dones"),
        seq_length=4,
        load_next_obs=False,
        filter_by_attribute="train",
    )
    orig = ReplayBuffer.open(demo_store)
    with h5py.File(h5) as f:
        train = _names(f["mask/train"])
    assert len(dataset) == sum(orig.episode_lengths[int(n.split("_")[1])] for n in train)
    item = dataset[0]
    assert item["actions"].shape == (4, 5)
    assert item["obs"]["state"].shape[-1] == 5
    episode = orig.get_episode(int(dataset.demos[0].split("_")[1]))
    np.testing.assert_allclose(item["actions"], episode["action"][:4], rtol=1e-6)
    np.testing.assert_allclose(item["obs"]["state"][0], episode["state"][0], rtol=1e-6)


def test_interrupted_import_resumes_to_the_same_store(tmp_path, monkeypatch):
    src = write_robomimic(tmp_path / "lift.hdf5")
    clean = import_robomimic(src, tmp_path / "clean.zarr", state_keys=["robot0_eef_pos"])
    real, calls = robomimic_io.read_demo, []

    def failing(demo, name, *args):
        calls.append(name)
        if name.endswith("demo_2"):
            raise KeyboardInterrupt
        return real(demo, name, *args)

    monkeypatch.setattr(robomimic_io, "read_demo", failing)
    with pytest.raises(KeyboardInterrupt):
        import_robomimic(src, tmp_path / "part.zarr", state_keys=["robot0_eef_pos"])
    part = ReplayBuffer.open(tmp_path / "part.zarr")
    assert part.n_episodes == 2
    assert part.attrs[robomimic_io.IMPORT_STATE] == {"complete": False, "demos": 3}
    with pytest.raises(ValueError, match=r"part.zarr is an interrupted robomimic import .*rerun"):
        robomimic_io.check_import_complete(part.attrs, tmp_path / "part.zarr")
    monkeypatch.setattr(robomimic_io, "read_demo", real)
    done = import_robomimic(src, tmp_path / "part.zarr", state_keys=["robot0_eef_pos"])
    assert done.n_episodes == 3
    assert done.attrs[robomimic_io.IMPORT_STATE]["complete"] is True
    robomimic_io.check_import_complete(done.attrs, tmp_path / "part.zarr")  # no error
    for key in clean.keys():
        np.testing.assert_array_equal(clean[key][:], done[key][:])
    other = write_robomimic(tmp_path / "other.hdf5", lengths=[4, 4])
    with pytest.raises(FileExistsError, match="not an interrupted import of the same file"):
        import_robomimic(other, tmp_path / "part.zarr")


def _drop_data(f):
    f["rollouts"] = f["data"]
    del f["data"]


def _short_obs(f):
    del f["data/demo_1/obs/object"]
    f["data/demo_1/obs"].create_dataset("object", data=np.zeros((3, 10)))


def _wrong_num_samples(f):
    f["data/demo_2"].attrs["num_samples"] = 4


def _foreign_group(f):
    f["data"].create_group("episode_a")


def _stale_mask(f):
    del f["mask/train"]
    f["mask"].create_dataset("train", data=np.array([b"demo_0", b"demo_7"]))


@pytest.mark.parametrize(
    "mutate, kwargs, match",
    [
        (_drop_data, {}, "not a robomimic dataset: it has no data/ group"),
        (_short_obs, {}, "inconsistent demo lengths: 'object' has 3 steps but actions has 5"),
        (_wrong_num_samples, {}, "num_samples=4 but actions has 9 steps"),
        (_foreign_group, {}, "not named demo_<i>"),
        (
            _stale_mask,
            {"filter_key": "train"},
            r"mask/train lists demos that data/ lacks: \['demo_7'\]",
        ),
        (
            None,
            {"obs_keys": ["eye_in_hand_image"]},
            r"unknown obs key\(s\) \['eye_in_hand_image'\]",
        ),
        (None, {"state_keys": ["joint_pos"]}, r"unknown obs key\(s\) \['joint_pos'\].*agentview"),
    ],
)
def test_bad_inputs_are_clear_errors(tmp_path, mutate, kwargs, match):
    src = write_robomimic(tmp_path / "bad.hdf5", mutate=mutate)
    with pytest.raises(RobomimicFormatError, match=match):
        import_robomimic(src, tmp_path / "out.zarr", **kwargs)


def test_a_file_that_is_not_hdf5_is_one_sentence(tmp_path):
    src = tmp_path / "demos.hdf5"
    src.write_text("not an hdf5 file\n")
    with pytest.raises(RobomimicFormatError, match=r"demos.hdf5 is not a readable HDF5 file"):
        import_robomimic(src, tmp_path / "out.zarr")
    assert not (tmp_path / "out.zarr").exists()


def test_missing_file_and_bad_export_arguments(demo_store, tmp_path):
    with pytest.raises(FileNotFoundError, match="no robomimic file"):
        import_robomimic(tmp_path / "nothing.hdf5", tmp_path / "out.zarr")
    with pytest.raises(ValueError, match="valid_ratio"):
        export_robomimic(demo_store, tmp_path / "x.hdf5", valid_ratio=1.0)


def test_cli_round_trip(demo_store, tmp_path, capsys):
    hdf5, zarr = tmp_path / "d.hdf5", tmp_path / "d.zarr"
    robomimic_io.main(["action=export", f"src={demo_store}", f"dst={hdf5}", "next_obs=false"])
    robomimic_io.main(["action=import", f"src={hdf5}", f"dst={zarr}", "obs_keys=[front_image]"])
    out = capsys.readouterr().out
    assert "d.hdf5" in out and "6 episodes" in out
    with h5py.File(tmp_path / "d.hdf5") as f:
        assert "next_obs" not in f["data/demo_0"]
    keys = ReplayBuffer.open(zarr).keys()
    assert "front" in keys and "action" in keys and "state" not in keys


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["action=import", "src=a", "dst=b", "state_key=[x]"], "Key 'state_key' not in"),
        (["action=upload", "src=a", "dst=b"], "action must be one of ('import', 'export')"),
        (["action=export", "src=a", "dst=b", "filter=train"], "['filter'] apply to action=import"),
        (["action=import", "src=a"], "missing mandatory value: dst"),
    ],
)
def test_cli_bad_arguments_are_clear_errors(argv, message, capsys):
    with pytest.raises(SystemExit):
        robomimic_io.main(argv)
    assert message in capsys.readouterr().err


def test_overwrite_replaces_only_an_export_and_a_failed_export_leaves_nothing(demo_store, tmp_path):
    import shutil

    import zarr

    out = tmp_path / "demos.hdf5"
    export_robomimic(demo_store, out)
    export_robomimic(demo_store, out, overwrite=True)  # our own export: replaced
    other = tmp_path / "other.hdf5"
    with h5py.File(other, "w") as f:
        f.create_group("data")  # robomimic's layout, but not written by s2policy
    with pytest.raises(FileExistsError, match="not a robomimic file exported by s2policy"):
        export_robomimic(demo_store, other, overwrite=True)
    assert "s2policy" not in h5py.File(other, "r")["data"].attrs
    store = tmp_path / "nan.zarr"
    shutil.copytree(demo_store, store)
    action = zarr.open_group(str(store), mode="r+")["data/action"]
    values = action[:]
    values[-1, 0] = np.nan  # the last episode: the file is half written when it is found
    action[:] = values
    with pytest.raises(ValueError, match=r"episode 5 has NaN or inf in 'action'"):
        export_robomimic(store, tmp_path / "nan.hdf5")
    with pytest.raises(FileExistsError, match="is the source of this command"):
        export_robomimic(store, store, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "demos.hdf5",
        "nan.zarr",
        "other.hdf5",
    ]  # fmt: skip  (no .partial left, nothing replaced)
