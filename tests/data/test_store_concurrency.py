"""One writer per store, readers at any time, and a commit record that a resized chunk cannot
fool: real processes writing, reading and being killed at once."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from s2policy.data.store import (
    ReplayBuffer,
    StoreLockedError,
    examine_store,
    repair_store,
)
from s2policy.fileio import lock_path

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
ENV.pop("S2POLICY_CRASH_AT", None)

#: A writer that appends episodes whose every value is the episode number + 1 (never 0: a
#: frame of zeros is one that was never written).
WRITER = """
import sys, time
import numpy as np
from s2policy.data.store import ReplayBuffer
from pathlib import Path
path, count, T = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
buf = ReplayBuffer.open(path, "a") if Path(path).exists() else ReplayBuffer.create(path)
print("writing", flush=True)
first = buf.n_episodes
for i in range(first, first + count):
    v = i + 1
    buf.add_episode(
        {"front": np.full((T, 16, 16, 3), v % 250 + 1, np.uint8),
         "action": np.full((T, 2), v, np.float32)},
        meta={"episode_seeds": np.int64(v)},
    )
    if len(sys.argv) > 4:
        time.sleep(float(sys.argv[4]))
if len(sys.argv) > 5:  # hold the store until told to close it
    print("holding", flush=True)
    sys.stdin.readline()
buf.close()
"""


def writer(path, count, T=30, pause=0.0, hold=False, **env):
    """A process appending ``count`` episodes of ``T`` steps after those ``path`` holds (with
    ``pause`` s after each; ``hold``: then keeping the store open until a line on stdin)."""
    args = [sys.executable, "-c", WRITER, str(path), str(count), str(T), str(pause)]
    if hold:
        args.append("hold")
    return subprocess.Popen(
        args,
        cwd=ROOT,
        env={**ENV, **env},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def check_episodes(buf: ReplayBuffer) -> None:
    """Every committed episode whole: its frames, actions and seed all say its number."""
    seeds = buf.get_meta("episode_seeds")
    front, action = buf["front"][:], buf["action"][:]
    assert buf.n_steps == len(front) == len(action)
    for i in range(buf.n_episodes):
        sl = buf.episode_slice(i)
        v = int(seeds[i])
        assert v == i + 1, (i, v)
        assert (front[sl] == v % 250 + 1).all(), f"episode {i}: frames not all written"
        assert (action[sl] == v).all(), f"episode {i}: actions not all written"


def wait_for(proc, line="writing"):
    out = proc.stdout.readline()
    assert line in out, out + proc.stderr.read()


def test_a_second_writer_is_refused_with_a_sentence_naming_the_first(tmp_path):
    path = tmp_path / "s.zarr"
    first = writer(path, 4, hold=True)
    wait_for(first)
    wait_for(first, "holding")
    info = json.loads(lock_path(path).read_text())
    assert info["pid"] == first.pid
    # a real collection into the same store, as a user would start it twice
    second = subprocess.run(
        [sys.executable, "collect_demos.py", f"output={path}", "n_episodes=8"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert second.returncode == 2, second.stderr[-2000:]
    message = second.stderr.strip().splitlines()[-1]
    assert message.startswith(f"error: {path} is being written by process {first.pid} on "), message
    assert "one writer per store" in message and "Traceback" not in second.stderr
    with pytest.raises(StoreLockedError, match=f"process {first.pid}"):
        ReplayBuffer.open(path, "a")
    reader = ReplayBuffer.open(path)  # readers are never refused
    check_episodes(reader)
    first.stdin.write("close\n")
    first.stdin.flush()
    assert first.wait(timeout=120) == 0, first.stderr.read()
    assert not lock_path(path).exists()  # freed (and removed) when the writer closed
    final = ReplayBuffer.open(path)
    assert final.n_episodes == 4
    check_episodes(final)
    assert not examine_store(path).problems


def test_two_writers_started_at_once_never_mix_their_episodes(tmp_path):
    """Whatever the timing, one writer is refused or waits its turn; the store stays whole."""
    path = tmp_path / "s.zarr"
    seed = writer(path, 2)
    assert seed.wait(timeout=120) == 0, seed.stderr.read()
    a, b = writer(path, 6), writer(path, 6)
    results = [p.wait(timeout=300) for p in (a, b)]
    errors = [p.stderr.read() for p in (a, b)]
    ok = [rc == 0 for rc in results]
    assert any(ok), errors
    for rc, err in zip(results, errors, strict=True):
        assert rc == 0 or "is being written by process" in err, err
    buf = ReplayBuffer.open(path)
    assert not examine_store(path).problems
    assert buf.n_episodes == 2 + 6 * sum(ok)  # both ran when one finished before the other
    check_episodes(buf)


def test_readers_never_see_a_half_written_episode(tmp_path):
    path = tmp_path / "s.zarr"
    proc = writer(path, 40, T=25)
    wait_for(proc)
    seen = set()
    while proc.poll() is None or not seen:
        try:
            buf = ReplayBuffer.open(path)
        except FileNotFoundError:
            continue
        if buf.n_episodes:
            check_episodes(buf)
        seen.add(buf.n_episodes)
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    assert len(seen) > 2, seen  # the reader did open the store mid-collection


def test_a_kill_inside_the_commit_after_a_repair_never_commits_a_stale_end(tmp_path):
    """A repair shrinks meta/episode_ends; zarr keeps the removed entries in the chunk. An
    append killed between the record's resize and its write must leave a trailing fill entry,
    not an old end that cuts the new episode short."""
    path = tmp_path / "s.zarr"
    with ReplayBuffer.create(path) as buf:
        for i, T in enumerate((5, 3, 15, 4)):
            v = i + 1
            buf.add_episode(
                {"front": np.full((T, 16, 16, 3), v + 1, np.uint8),
                 "action": np.full((T, 2), v, np.float32)},
                meta={"episode_seeds": np.int64(v)},
            )  # fmt: skip
    # damage: data/action loses its last steps; a repair keeps episodes 0-1 (ends 5, 8)
    zarr.open_group(str(path), mode="r+")["data/action"].resize((20, 2))
    repair_store(path, confirm=True)
    assert list(ReplayBuffer.open(path).episode_ends) == [5, 8]
    proc = writer(path, 1, T=30, S2POLICY_CRASH_AT="episode_commit_resize")
    assert proc.wait(timeout=120) == 137, proc.stderr.read()
    ends = zarr.open_group(str(path), mode="r")["meta/episode_ends"][:]
    assert list(ends) == [5, 8, 0]  # grown by the killed append; its entry reads the fill value
    buf = ReplayBuffer.open(path)
    assert list(buf.episode_ends) == [5, 8]  # not [5, 8, 23]: episode 2 cut to 15 of 30 steps
    assert writer(path, 1, T=30).wait(timeout=120) == 0
    buf = ReplayBuffer.open(path)
    assert list(buf.episode_lengths) == [5, 3, 30]
    check_episodes(buf)


def test_overwrite_replaces_only_a_store(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "plan.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="is a folder holding plan.txt that is not a "
                       "ReplayBuffer store; overwrite=true replaces only"):  # fmt: skip
        ReplayBuffer.create(folder, overwrite=True)
    assert (folder / "plan.txt").read_text() == "mine"
    file = tmp_path / "file.zarr"
    file.write_text("x")
    with pytest.raises(FileExistsError, match="is a file that is not a ReplayBuffer store"):
        ReplayBuffer.create(file, overwrite=True)
    assert file.read_text() == "x"
    store = tmp_path / "s.zarr"
    ReplayBuffer.create(store).close()
    ReplayBuffer.create(store, overwrite=True).close()  # a store is replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.zarr", "notes", "s.zarr"]


def test_a_closed_writer_frees_the_store_in_the_same_process(tmp_path):
    path = tmp_path / "s.zarr"
    buf = ReplayBuffer.create(path)
    with pytest.raises(StoreLockedError, match="this process"):
        ReplayBuffer.open(path, "a")
    buf.close()
    with pytest.raises(PermissionError):
        buf.add_episode({"action": np.zeros((2, 2), np.float32)})
    with ReplayBuffer.open(path, "a") as again:
        again.add_episode({"action": np.ones((2, 2), np.float32)})
    assert not lock_path(path).exists()


def test_one_lock_whichever_way_the_path_is_written(tmp_path):
    path = tmp_path / "s.zarr"
    ReplayBuffer.create(path).close()
    link = tmp_path / "link.zarr"
    link.symlink_to(path)
    with ReplayBuffer.open(path, "a"):
        with pytest.raises(StoreLockedError, match="this process"):
            ReplayBuffer.open(link, "a")
