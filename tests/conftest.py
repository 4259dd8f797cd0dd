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
