import numpy as np
import pytest

import envs  # noqa: F401  (chooses the headless GL backend before a test module imports mujoco)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
