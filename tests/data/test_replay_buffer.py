import numpy as np
import pytest
import zarr

from s2policy.data.store import ReplayBuffer


def episode(rng, T, H=8, W=6):
    return {
        "front": rng.integers(0, 256, size=(T, H, W, 3), dtype=np.uint8),
        "state": rng.normal(size=(T, 5)).astype(np.float32),
        "action": rng.uniform(-1, 1, size=(T, 5)).astype(np.float32),
    }


@pytest.fixture
def store(tmp_path, rng):
    buf = ReplayBuffer.create(tmp_path / "demo.zarr", attrs={"task": "cube_pick", "control_hz": 10})
    eps = [episode(rng, T) for T in (5, 3, 7)]
    for i, ep in enumerate(eps):
        buf.add_episode(ep, meta={"episode_seeds": i * 10})
    return buf, eps


def test_round_trip(store):
    buf, eps = store
    back = ReplayBuffer.open(buf.path)
    assert back.n_episodes == 3 and back.n_steps == 15
    np.testing.assert_array_equal(back.episode_ends, [5, 8, 15])
    np.testing.assert_array_equal(back.episode_lengths, [5, 3, 7])
    assert back.attrs == {"task": "cube_pick", "control_hz": 10}
    assert back.keys() == ["action", "front", "state"]
    for i, ep in enumerate(eps):
        got = back.get_episode(i)
        for key in ep:
            np.testing.assert_array_equal(got[key], ep[key])
        assert back.episode_slice(i) == slice(
            int(back.episode_ends[i]) - len(ep["action"]), int(back.episode_ends[i])
        )
    np.testing.assert_array_equal(back["state"][5:8], eps[1]["state"])
    np.testing.assert_array_equal(back.get_meta("episode_seeds"), [0, 10, 20])
    assert back["front"].shape == (15, 8, 6, 3)
    np.testing.assert_array_equal(
        back["action"][np.array([0, 14])], np.stack([eps[0]["action"][0], eps[2]["action"][-1]])
    )
    with pytest.raises(IndexError):
        back.episode_slice(3)
    with pytest.raises(IndexError):
        back["state"][15]


def test_layout_matches_diffusion_policy_and_images_are_chunked_in_time(store):
    buf, _ = store
    root = zarr.open_group(str(buf.path), mode="r")
    assert set(root["data"].array_keys()) == {"front", "state", "action"}
    np.testing.assert_array_equal(root["meta/episode_ends"][:], [5, 8, 15])
    front = root["data/front"]
    assert front.dtype == np.uint8 and front.chunks[1:] == (8, 6, 3) and front.chunks[0] > 1
    assert front.compressors, "images must be compressed"


def test_append_after_reopen(store, rng):
    buf, eps = store
    more = episode(rng, 4)
    buf.close()  # one writer at a time
    again = ReplayBuffer.open(buf.path, "a")
    again.add_episode(more, meta={"episode_seeds": 30})
    back = ReplayBuffer.open(buf.path)
    assert back.n_episodes == 4 and back.n_steps == 19
    np.testing.assert_array_equal(back.get_episode(3)["front"], more["front"])
    np.testing.assert_array_equal(back.get_episode(0)["front"], eps[0]["front"])


def test_interrupted_write_is_invisible_and_removed_on_append(store, rng):
    buf, eps = store
    buf.close()
    root = zarr.open_group(str(buf.path), mode="r+")
    # What a write killed after the data (and half the meta) of a 4th episode leaves behind.
    for key, value in episode(rng, 6).items():
        root["data"][key].append(value)
    root["meta/episode_seeds"].append(np.array([99]))
    root["meta/episode_ends"].resize((4,))  # resized, value never written (fill value 0)
    reader = ReplayBuffer.open(buf.path)
    assert reader.n_episodes == 3 and reader.n_steps == 15
    assert reader["state"].shape == (15, 5) and len(reader["state"][:]) == 15
    np.testing.assert_array_equal(reader.get_meta("episode_seeds"), [0, 10, 20])
    writer = ReplayBuffer.open(buf.path, "a")
    assert root["data/state"].shape[0] == 15 and root["meta/episode_ends"].shape == (3,)
    assert root["meta/episode_seeds"].shape == (3,)
    writer.add_episode(eps[0], meta={"episode_seeds": 40})
    np.testing.assert_array_equal(ReplayBuffer.open(buf.path).episode_ends, [5, 8, 15, 20])


def test_missing_store(tmp_path):
    with pytest.raises(FileNotFoundError, match="no ReplayBuffer store.*collect_demos.py"):
        ReplayBuffer.open(tmp_path / "nope.zarr")


def test_store_of_another_layout(tmp_path):
    root = zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    root.create_array("images", shape=(3, 2), dtype="uint8")
    with pytest.raises(
        ValueError, match="not a ReplayBuffer store: missing data, meta/episode_ends"
    ):
        ReplayBuffer.open(tmp_path / "other.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="not a"):
        ReplayBuffer.open(tmp_path / "plain")


def test_newer_layout_version_refused(store):
    buf, _ = store
    zarr.open_group(str(buf.path), mode="r+").attrs["layout_version"] = 99
    with pytest.raises(ValueError, match="layout version 99"):
        ReplayBuffer.open(buf.path)


def test_create_does_not_clobber(store):
    buf, _ = store
    buf.close()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        ReplayBuffer.create(buf.path)
    assert ReplayBuffer.create(buf.path, overwrite=True).n_episodes == 0


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda ep: ep.pop("state"), r"do not match.*missing: \['state'\]"),
        (lambda ep: ep.update(extra=np.zeros((4, 1))), r"unexpected: \['extra'\]"),
        (lambda ep: ep.update(front=np.zeros((4, 9, 6, 3), np.uint8)), "per-step shape"),
        (lambda ep: ep.update(front=np.zeros((4, 8, 6, 3), np.float32)), "dtype"),
        (lambda ep: ep.update(state=np.zeros((3, 5), np.float32)), "share their first"),
        (lambda ep: ep["action"].__setitem__((2, 1), np.nan), r"NaN or inf \(first at step 2\)"),
        (lambda ep: ep["state"].__setitem__((0, 0), np.inf), "NaN or inf"),
    ],
)
def test_bad_episodes_are_refused_and_change_nothing(store, rng, change, match):
    buf, _ = store
    ep = episode(rng, 4)
    change(ep)
    with pytest.raises((ValueError, TypeError), match=match):
        buf.add_episode(ep, meta={"episode_seeds": 1})
    buf.close()
    back = ReplayBuffer.open(buf.path, "a")
    assert back.n_steps == 15 and zarr.open_group(str(buf.path))["data/state"].shape[0] == 15


def test_empty_episode_and_bad_meta(store):
    buf, _ = store
    with pytest.raises(ValueError, match="empty episode"):
        buf.add_episode(
            {k: np.zeros((0, 5), np.float32) for k in ("state", "action")}
            | {"front": np.zeros((0, 8, 6, 3), np.uint8)}
        )
    with pytest.raises(ValueError, match="one scalar"):
        buf.add_episode(episode(np.random.default_rng(1), 2), meta={"episode_seeds": [1, 2]})


def test_read_only_store_refuses_writes(store, rng):
    buf, _ = store
    with pytest.raises(PermissionError, match=r"ReplayBuffer.open\(path, 'a'\)"):
        ReplayBuffer.open(buf.path).add_episode(episode(rng, 2))
    with pytest.raises(ValueError, match="mode must be"):
        ReplayBuffer.open(buf.path, "w")


def test_unknown_keys(store):
    buf, _ = store
    with pytest.raises(KeyError, match="no data key 'wrist'.*front"):
        buf["wrist"]
    with pytest.raises(KeyError, match="no meta key"):
        buf.get_meta("episode_rewards")


def test_meta_keys_cannot_start_after_the_first_episode(tmp_path, rng):
    buf = ReplayBuffer.create(tmp_path / "nometa.zarr")
    buf.add_episode(episode(rng, 3))
    # A meta array begun at episode 1 would be shorter than episode_ends: a damaged store.
    with pytest.raises(ValueError, match=r"meta keys \['episode_seeds'\] do not match"):
        buf.add_episode(episode(rng, 2), meta={"episode_seeds": 1})
    assert ReplayBuffer.open(buf.path).meta_keys() == [] and buf.n_episodes == 1


def test_a_killed_creation_leaves_no_store_and_the_next_creation_succeeds(tmp_path):
    path = tmp_path / "demo.zarr"
    (tmp_path / ".demo.zarr.creating").mkdir()  # what a creation killed before its rename left
    assert ReplayBuffer.create(path, attrs={"task": "x"}).attrs == {"task": "x"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.zarr"]
