"""A full disk, for real: a small tmpfs mounted for the test (root only; elsewhere the bad-input
table's rows, which make the lowest write raise ENOSPC, give the same sentences). A collection
and a training run stop with one sentence, keep what they saved, and continue once there is
space."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from s2policy.data.store import ReplayBuffer, examine_store

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SMALL = ["task.env.image_size=[32,32]", "task.env.shadow_size=0"]


@pytest.fixture
def tmpfs(tmp_path):
    """``(folder, resize)``: a 256 KiB tmpfs; ``resize(mib)`` grows it (the space a user frees)."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")

    def resize(mib: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={mib}m", str(folder)], check=True)

    yield folder, resize
    subprocess.run(["umount", "-l", str(folder)], check=False)


def run(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, *map(str, args)], cwd=cwd, env=ENV, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip


def test_collection_on_a_full_disk_keeps_its_episodes_and_continues(tmpfs, tmp_path):
    folder, resize = tmpfs
    store = folder / "cube_pick.zarr"
    args = ["collect_demos.py", f"output={store}", "n_episodes=40", *SMALL,
            f"hydra.run.dir={tmp_path}/h"]  # fmt: skip
    full = run(*args)
    assert full.returncode == 2, full.stderr[-2000:]
    message = full.stderr.strip().splitlines()[-1]
    assert message.startswith(f"error: no space left on the device while writing {store}"), message
    assert "rerun the same command: it continues after the last saved episode" in message
    assert "Traceback" not in full.stderr
    kept = ReplayBuffer.open(store).n_episodes
    assert 0 < kept < 40
    resize(64)
    again = run(*args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert ReplayBuffer.open(store).n_episodes == 40
    assert not examine_store(store).problems


def test_a_checkpoint_on_a_full_disk_keeps_the_previous_one_and_resumes(
    tmpfs, tmp_path, demo_store
):
    folder, resize = tmpfs
    resize(4)
    run_dir = folder / "run"
    args = [
        "train_policy.py", f"dataset={demo_store}", "encoder=blind", *SMALL,
        "train.ckpt_every=20", "train.val_every=20", "train.log_every=20", "train.device=cpu",
        "policy.hidden_dims=[256,256]", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    first = run(*args, "train.steps=20")
    assert first.returncode == 0, first.stderr[-2000:]
    size = sum(p.stat().st_size for p in (run_dir / "checkpoint").iterdir())
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    filler = folder / "filler"
    filler.write_bytes(b"\0" * max(0, free - size // 2))  # room for half a checkpoint
    resumed = run(*args, "train.steps=40", "train.resume=true")
    assert resumed.returncode == 2, resumed.stderr[-2000:]
    message = resumed.stderr.strip().splitlines()[-1]
    assert message.startswith("error: no space left on the device while writing "), message
    assert "resume with train.resume=true" in message and "Traceback" not in resumed.stderr
    assert not (run_dir / "checkpoint.new").exists()  # the half-written one is removed
    assert '"step": 20' in (run_dir / "checkpoint/policy.json").read_text()  # the previous kept
    filler.unlink()
    done = run(*args, "train.steps=40", "train.resume=true")
    assert done.returncode == 0, done.stderr[-2000:]
    assert '"step": 40' in (run_dir / "checkpoint/policy.json").read_text()
