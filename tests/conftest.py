import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import envs  # noqa: F401  (chooses the headless GL backend before a test module imports mujoco)
from s2policy.data.collect import CollectConfig, collect_demos
from s2policy.encoders.s2 import EncoderConfig
from s2policy.task import TaskConfig
from s2policy.training.config import RunConfig, TrainConfig

TASK = TaskConfig(env={"image_size": (32, 32), "shadow_size": 0})


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("demos") / "cube_pick.zarr"
    collect_demos(CollectConfig(task=TASK, n_episodes=6, output=str(path)))
    return path


BLIND = EncoderConfig(backbone="none")


def _run_config(store, out, policy, encoder=None, **train):
    defaults = dict(
        steps=40,
        batch_size=32,
        log_every=10,
        val_every=20,
        ckpt_every=20,
        warmup_steps=5,
        device="cpu",
        dtype="float32",
        cache_chunk_steps=64,
    )
    return RunConfig(
        task=TASK,
        encoder=encoder or EncoderConfig(backbone="vit_nano", scales=(32, 64)),
        policy=policy,
        train=TrainConfig(**{**defaults, **train}),
        dataset=str(store),
        output_dir=str(out),
    )


@pytest.fixture(scope="session")
def run_config():
    """``run_config(store, out, policy, encoder=None, **train_overrides) -> RunConfig`` on tiny
    settings (``encoder``: the nano S² encoder by default, ``BLIND`` for a state-only policy)."""
    return _run_config


@pytest.fixture
def rng():
    return np.random.default_rng(0)


#: torchrun with its rendezvous store on a port the OS picks when it binds (no fixed port to
#: collide with another run, no probe-then-bind race).
TORCHRUN = [
    sys.executable,
    "-m",
    "torch.distributed.run",
    "--nproc-per-node=2",
    "--rdzv-backend=c10d",
    "--rdzv-endpoint=127.0.0.1:0",
    "--max-restarts=0",
]


def _run_torchrun(args, timeout=240, **env):
    """Run ``torchrun <args>`` (2 processes) from the repository; past ``timeout`` s stop it
    (torchrun stops its workers on SIGTERM) and fail. Returns ``(returncode, stdout, stderr)``."""
    proc = subprocess.Popen(
        [*TORCHRUN, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"torchrun did not finish in {timeout} s:\n{err[-3000:]}")
    return proc.returncode, out, err


@pytest.fixture(scope="session")
def torchrun():
    """``torchrun(args, timeout=240, **env) -> (returncode, stdout, stderr)``."""
    return _run_torchrun
