"""Fixtures of datasets written as LeRobot itself writes them (tests/data/lerobot_upstream.py)."""

import importlib.util
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def upstream():
    """tests/data/lerobot_upstream.py (it needs pyarrow, PyAV and pandas: skipped without)."""
    for name in ("pyarrow", "av", "pandas"):
        pytest.importorskip(name)
    spec = importlib.util.spec_from_file_location(
        "lerobot_upstream", Path(__file__).with_name("lerobot_upstream.py")
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def upstream_episodes(upstream):
    return upstream.make_episodes()


@pytest.fixture(scope="session")
def lerobot_v30(tmp_path_factory, upstream, upstream_episodes):
    """A dataset as lerobot 0.4.4 writes it (3 episodes, AV1 + image camera, 8-dim state)."""
    return upstream.write_v30(tmp_path_factory.mktemp("lerobot_v30") / "my_arm", upstream_episodes)


@pytest.fixture(scope="session")
def lerobot_v21(tmp_path_factory, upstream, upstream_episodes):
    """The same episodes as lerobot 0.3.3 writes them."""
    return upstream.write_v21(tmp_path_factory.mktemp("lerobot_v21") / "my_arm", upstream_episodes)
