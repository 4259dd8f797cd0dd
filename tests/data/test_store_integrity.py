"""Damaged and interrupted ReplayBuffer stores: what is refused (and left untouched), what a rerun
completes, what reads report, the inspect/repair command, and collection killed at named points."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from s2policy.data import store as replay_buffer
from s2policy.data.collect import CollectConfig, collect_demos
from s2policy.data.store import ReplayBuffer
from s2policy.data.store import chunks as store_chunks
from s2policy.task import TaskConfig

ROOT = Path(__file__).resolve().parents[2]
DEMO_ENV = {"image_size": (32, 32), "shadow_size": 0}  # the demo_store fixture's (conftest.py)
SMALL_ENV = {"image_size": (24, 24), "shadow_size": 0}


def episode(rng, T, H=8, W=6):
    return {
        "front": rng.integers(0, 256, size=(T, H, W, 3), dtype=np.uint8),
        "state": rng.normal(size=(T, 5)).astype(np.float32),
        "action": rng.uniform(-1, 1, size=(T, 5)).astype(np.float32),
    }


def arrays(path) -> dict[str, np.ndarray]:
    """Every array of the store as zarr itself reads it (whole arrays, committed or not)."""
    root = zarr.open_group(str(path), mode="r")
    return {
        f"{group}/{key}": root[group][key][:]
        for group in ("data", "meta")
        if group in root
        for key in sorted(root[group].array_keys())
    }


def assert_same_arrays(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def assert_identical_stores(a, b):
    """Bit-identical: the same arrays (whole, dtypes included), chunking and root attributes."""
    assert_same_arrays(arrays(a), arrays(b))
    ra, rb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    assert ra.attrs.asdict() == rb.attrs.asdict()
    for key in ra["data"].array_keys():
        assert ra["data"][key].chunks == rb["data"][key].chunks, key


def small_cfg(out, n):
    return CollectConfig(task=TaskConfig(env=SMALL_ENV), n_episodes=n, output=str(out))


@pytest.fixture(scope="module")
def clean_store(tmp_path_factory):
    """An uninterrupted collection of 3 episodes: what every interrupted one must equal."""
    path = tmp_path_factory.mktemp("clean") / "demo.zarr"
    collect_demos(small_cfg(path, 3))
    return path


@pytest.fixture
def store(tmp_path, rng):
    buf = ReplayBuffer.create(tmp_path / "demo.zarr", attrs={"task": "cube_pick"})
    eps = [episode(rng, T) for T in (5, 3, 7)]
    for i, ep in enumerate(eps):
        buf.add_episode(ep, meta={"episode_seeds": i * 10})
    return buf.path, eps


# ---------------------------------------------------------------- 1. inconsistent commit records
def damaged_copy(demo_store, tmp_path):
    """The demo store (6 episodes) with episode_ends[3] overwritten by episode_ends[1]."""
    path = tmp_path / "damaged.zarr"
    shutil.copytree(demo_store, path)
    ends = zarr.open_group(str(path), mode="r+")["meta/episode_ends"]
    ends[3] = ends[1]
    return path


def test_corrupt_episode_ends_is_refused_and_appending_deletes_nothing(demo_store, tmp_path):
    path = damaged_copy(demo_store, tmp_path)
    before = arrays(path)
    cfg = CollectConfig(task=TaskConfig(env=DEMO_ENV), n_episodes=8, output=str(path))
    with pytest.raises(ValueError) as err:
        collect_demos(cfg)
    msg = str(err.value)
    assert "meta/episode_ends[3]" in msg and "nothing was changed" in msg, msg
    assert "action=inspect" in msg and "action=repair" in msg and "confirm=true" in msg, msg
    assert_same_arrays(arrays(path), before)  # all 6 episodes still there
    with pytest.raises(ValueError, match=r"meta/episode_ends\[3\].*action=inspect"):
        ReplayBuffer.open(path)  # readers refuse it too (they would see 3 of 6 episodes)


def _ends_not_increasing(root):
    root["meta/episode_ends"][1] = 5  # [5, 5, 15]


def _ends_past_the_data(root):
    root["meta/episode_ends"][2] = 99  # [5, 8, 99]: the data holds 15 steps


def _last_end_copied(root):
    root["meta/episode_ends"][2] = 8  # [5, 8, 8]: a copied value, not a fill value


def _first_end_zero(root):
    root["meta/episode_ends"][0] = 0  # [0, 8, 15]


def _meta_shorter(root):
    root["meta/episode_seeds"].resize((2,))


def _meta_longer(root):
    root["meta/episode_seeds"].append(np.array([7, 8]))  # 5 entries for 3 episodes


def _data_shorter(root):
    root["data/state"].resize((10, 5))


@pytest.mark.parametrize(
    "damage, match",
    [
        (_ends_not_increasing, r"meta/episode_ends\[1\] = 5 is not greater than .*\[0\] = 5"),
        (_ends_past_the_data, r"meta/episode_ends\[2\] = 99 is past the end of data/"),
        (_last_end_copied, r"meta/episode_ends\[2\] = 8 is not greater than"),
        (_first_end_zero, r"meta/episode_ends\[0\] = 0 is not positive"),
        (_meta_shorter, r"meta/episode_seeds has 2 entries for 3 episodes"),
        (_meta_longer, r"meta/episode_seeds has 5 entries for 3 episodes"),
        (_data_shorter, r"meta/episode_ends\[2\] = 15 is past the end of data/state \(10 steps\)"),
    ],
)
def test_inconsistent_commit_records_are_refused_untouched(store, damage, match):
    path, _ = store
    damage(zarr.open_group(str(path), mode="r+"))
    before = arrays(path)
    for mode in ("r", "a"):
        with pytest.raises(ValueError, match=match + r".*nothing was changed.*action=inspect"):
            ReplayBuffer.open(path, mode)
    assert_same_arrays(arrays(path), before)


def test_inspect_and_repair_keep_the_valid_prefix_only_with_confirm(demo_store, tmp_path, capsys):
    from s2policy.data.store import main

    path = damaged_copy(demo_store, tmp_path)
    orig = ReplayBuffer.open(demo_store)
    before = arrays(path)
    with pytest.raises(SystemExit) as exit:
        main(["action=inspect", f"store={path}"])
    out = capsys.readouterr().out
    assert exit.value.code == 1, out
    assert "6 entries in meta/episode_ends, 3 valid" in out, out
    assert "problem: meta/episode_ends[3]" in out and "front" in out, out
    assert "keeps episodes 0-2" in out and "removes episodes 3-5" in out, out

    main(["action=repair", f"store={path}"])  # a dry run without confirm=true
    out = capsys.readouterr().out
    assert "would remove episodes 3-5" in out and "confirm=true" in out, out
    assert_same_arrays(arrays(path), before)

    main(["action=repair", f"store={path}", "confirm=true"])
    assert "removed episodes 3-5" in capsys.readouterr().out
    fixed = ReplayBuffer.open(path)
    assert fixed.n_episodes == 3
    np.testing.assert_array_equal(fixed.episode_ends, orig.episode_ends[:3])
    for key in orig.keys():
        np.testing.assert_array_equal(fixed[key][:], orig[key][: orig.episode_ends[2]])
    main(["action=inspect", f"store={path}"])  # exits 0: nothing wrong any more
    assert "no problems" in capsys.readouterr().out
    # Collection continues after it, reproducing the original episodes 3 and 4.
    collect_demos(CollectConfig(task=TaskConfig(env=DEMO_ENV), n_episodes=5, output=str(path)))
    again = ReplayBuffer.open(path)
    np.testing.assert_array_equal(again.episode_ends, orig.episode_ends[:5])
    np.testing.assert_array_equal(again["front"][:], orig["front"][: orig.episode_ends[4]])


def test_repair_of_a_healthy_store_changes_nothing(store, capsys):
    from s2policy.data.store import main

    path, _ = store
    before = arrays(path)
    main(["action=repair", f"store={path}", "confirm=true"])
    assert "nothing to repair" in capsys.readouterr().out
    assert_same_arrays(arrays(path), before)


# ---------------------------------------------------------------- 2. interrupted first episode
@pytest.mark.parametrize("partial_shape", [(4, 8, 6, 3), (4, 9, 6, 3)])
def test_a_store_killed_in_its_first_episode_is_completed(tmp_path, rng, partial_shape):
    path = tmp_path / "demo.zarr"
    ReplayBuffer.create(path, attrs={"task": "cube_pick"})
    root = zarr.open_group(str(path), mode="r+")
    # What a write killed after the first array of the first episode leaves behind.
    root["data"].create_array("front", shape=partial_shape, dtype="uint8")[:] = 7
    root["meta/episode_ends"].resize((1,))
    assert ReplayBuffer.open(path).n_episodes == 0
    ep = episode(rng, 5)
    ReplayBuffer.open(path, "a").add_episode(ep, meta={"episode_seeds": 3})
    back = ReplayBuffer.open(path)
    assert back.n_episodes == 1 and back.keys() == sorted(ep)
    for key, value in ep.items():
        np.testing.assert_array_equal(back[key][:], value)


@pytest.mark.parametrize("stage", ["empty_dir", "group", "attrs", "data_group"])
def test_an_interrupted_store_creation_is_completed_by_the_rerun(tmp_path, clean_store, stage):
    """What a store creation killed part-way (by an older, non-atomic writer) leaves behind."""
    path = tmp_path / "demo.zarr"
    path.mkdir()
    if stage != "empty_dir":
        root = zarr.open_group(str(path), mode="w")
        if stage in ("attrs", "data_group"):
            root.attrs.update({"layout": replay_buffer.LAYOUT, "layout_version": 1})
        if stage == "data_group":
            root.create_group("data")
    collect_demos(small_cfg(path, 3))
    assert_identical_stores(path, clean_store)


def test_a_zarr_group_holding_other_arrays_is_still_refused(tmp_path):
    root = zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    root.create_array("images", shape=(3, 2), dtype="uint8")
    with pytest.raises(ValueError, match="not a ReplayBuffer store"):
        collect_demos(small_cfg(tmp_path / "other.zarr", 1))
    assert list(zarr.open_group(str(tmp_path / "other.zarr")).array_keys()) == ["images"]


def test_a_failed_write_is_removed_before_the_next_episode_in_the_same_process(store, rng):
    path, eps = store
    buf = ReplayBuffer.open(path, "a")
    root = zarr.open_group(str(path), mode="r+")
    root["data/state"].append(np.ones((4, 5), np.float32))  # a write that raised midway
    buf.add_episode(eps[1], meta={"episode_seeds": 40})
    back = ReplayBuffer.open(path)
    np.testing.assert_array_equal(back.episode_ends, [5, 8, 15, 18])
    np.testing.assert_array_equal(back.get_episode(3)["state"], eps[1]["state"])


# ---------------------------------------------------------------- 3. missing / unreadable chunks
@pytest.fixture
def chunked(tmp_path, rng, monkeypatch):
    """3 episodes (5, 3, 7 steps); data/front in chunks of 6 steps: c/0 0-5, c/1 6-11, c/2 12-14."""
    monkeypatch.setattr(store_chunks, "CHUNK_BYTES", 1000)
    buf = ReplayBuffer.create(tmp_path / "demo.zarr")
    eps = [episode(rng, T) for T in (5, 3, 7)]
    for i, ep in enumerate(eps):
        buf.add_episode(ep, meta={"episode_seeds": i})
    assert zarr.open_group(str(buf.path))["data/front"].chunks[0] == 6
    return buf.path, eps


def test_a_deleted_chunk_of_committed_data_is_an_error_naming_array_and_steps(chunked):
    path, eps = chunked
    (path / "data/front/c/1/0/0/0").unlink()
    buf = ReplayBuffer.open(path)
    np.testing.assert_array_equal(buf["front"][:5], eps[0]["front"])  # other chunks still read
    np.testing.assert_array_equal(buf.get_episode(0)["front"], eps[0]["front"])
    reads = [
        lambda: buf["front"][:],
        lambda: buf["front"][7],
        lambda: buf["front"][np.array([0, 8])],
        lambda: buf.get_episode(1),
        lambda: np.asarray(buf["front"]),
    ]
    for read in reads:
        with pytest.raises(ValueError, match=r"data/front .*missing.*steps 6-11.*action=inspect"):
            read()


def test_a_truncated_chunk_is_an_error_naming_array_and_steps(chunked):
    path, _ = chunked
    chunk = path / "data/front/c/1/0/0/0"
    chunk.write_bytes(chunk.read_bytes()[:40])
    buf = ReplayBuffer.open(path)
    for read in (lambda: buf["front"][:], lambda: buf["front"][6:9], lambda: buf.get_episode(2)):
        with pytest.raises(ValueError, match=r"data/front .*cannot be read.*steps 6-11"):
            read()


def test_a_deleted_meta_chunk_is_an_error(chunked):
    path, _ = chunked
    (path / "meta/episode_seeds/c/0").unlink()
    with pytest.raises(ValueError, match=r"meta/episode_seeds .*missing.*episodes 0-2"):
        ReplayBuffer.open(path).get_meta("episode_seeds")


def test_all_zero_chunks_are_written_so_a_missing_one_is_never_taken_for_zeros(tmp_path):
    buf = ReplayBuffer.create(tmp_path / "zeros.zarr")
    zeros = {"front": np.zeros((4, 8, 6, 3), np.uint8), "state": np.zeros((4, 5), np.float32)}
    buf.add_episode(zeros, meta={"episode_seeds": 0, "episode_success": False})
    for name in ("data/front/c/0/0/0/0", "data/state/c/0/0", "meta/episode_seeds/c/0"):
        assert (buf.path / name).is_file(), name
    back = ReplayBuffer.open(buf.path)
    np.testing.assert_array_equal(back["front"][:], zeros["front"])
    assert not back.get_meta("episode_success").any()


def test_appending_after_a_missing_last_chunk_is_refused_untouched(chunked, rng):
    path, _ = chunked
    (path / "data/front/c/2/0/0/0").unlink()
    before = arrays(path)
    buf = ReplayBuffer.open(path, "a")
    with pytest.raises(ValueError, match=r"data/front .*missing.*steps 12-14"):
        buf.add_episode(episode(rng, 3), meta={"episode_seeds": 9})
    assert_same_arrays(arrays(path), before)


def test_inspect_reports_missing_chunks_and_repair_keeps_the_episodes_before(chunked, capsys):
    from s2policy.data.store import main

    path, eps = chunked
    (path / "data/front/c/2/0/0/0").unlink()  # steps 12-14: inside episode 2 (steps 8-14)
    with pytest.raises(SystemExit):
        main(["action=inspect", f"store={path}"])
    out = capsys.readouterr().out
    assert "problem: data/front is missing the chunk file of committed steps 12-14" in out, out
    main(["action=repair", f"store={path}", "confirm=true"])
    assert "removed episode 2 " in capsys.readouterr().out
    back = ReplayBuffer.open(path)
    np.testing.assert_array_equal(back.episode_ends, [5, 8])
    np.testing.assert_array_equal(
        back["front"][:], np.concatenate([eps[0]["front"], eps[1]["front"]])
    )


def test_stores_of_older_writers_with_absent_all_zero_chunks_still_read(tmp_path):
    """Before s2policy wrote every chunk, zarr skipped all-zero ones: those arrays (without the
    marker attribute) read the fill value for an absent chunk, as they always did."""
    path = tmp_path / "old.zarr"
    buf = ReplayBuffer.create(path)
    buf.add_episode({"state": np.ones((3, 2), np.float32)}, meta={"episode_seeds": 0})
    root = zarr.open_group(str(path), mode="r+")
    for name in ("data/state", "meta/episode_seeds"):
        root[name].attrs.put({})
    (path / "meta/episode_seeds/c/0").unlink(missing_ok=True)  # all zeros: old writers skipped it
    np.testing.assert_array_equal(ReplayBuffer.open(path).get_meta("episode_seeds"), [0])


# ---------------------------------------------------------------- 4. killed at named points
COLLECT = """
import sys
import envs
from s2policy.data.collect import CollectConfig, collect_demos
from s2policy.task import TaskConfig
env = {"image_size": (24, 24), "shadow_size": 0}
collect_demos(CollectConfig(task=TaskConfig(env=env), n_episodes=3, output=sys.argv[1]))
"""


@pytest.mark.parametrize(
    "point",
    [
        "store_create",  # the store's creation
        "episode_data",  # the first episode's write, after its first data array
        "episode_meta",  # the first episode's meta written, meta/episode_ends not yet
        "episode_data@3",
        "episode_meta@2",
        "episode_commit@2",  # right after the second episode was committed
    ],
)
def test_collection_killed_at_a_named_point_resumes_bit_identical(
    tmp_path, clean_store, monkeypatch, point
):
    out = tmp_path / "demo.zarr"
    env = {**os.environ, "S2POLICY_CRASH_AT": point}
    proc = subprocess.run(
        [sys.executable, "-c", COLLECT, str(out)], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 137, proc.stderr[-3000:]
    monkeypatch.delenv("S2POLICY_CRASH_AT", raising=False)
    collect_demos(small_cfg(out, 3))  # the rerun, without the hook
    assert_identical_stores(out, clean_store)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.zarr"]  # no leftovers


def test_store_command_help_and_bad_action(capsys):
    from s2policy.data.store import main

    with pytest.raises(SystemExit) as exit:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit.value.code == 0 and out.startswith("s2policy-store: ") and "Usage:" in out
    with pytest.raises(SystemExit):
        main(["action=fix", "store=x.zarr"])
    assert "action must be one of ('inspect', 'repair')" in capsys.readouterr().err
