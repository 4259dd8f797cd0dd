"""Train/eval parity on a real cached store: for every step of the demonstrations, the training
batch path (cached features of the window's observation steps, ``CachedFeatureData``) and the
live path (``PolicyRunner`` fed the stored frames of the episode one step at a time) see the same
observations and predict the same chunk, and the executed part of that chunk is the part of the
training target that holds the demonstration's actions of the current step and after."""

import numpy as np
import pytest
import torch

from s2policy.data.store import ReplayBuffer
from s2policy.policies.artifact import load
from s2policy.policies.mlp import MLPPolicyConfig
from s2policy.policies.runner import PolicyRunner
from s2policy.training.dataset import CachedFeatureData, WindowSpec
from s2policy.training.loop import fit

N_OBS, HORIZON, N_ACT = 3, 8, 3  # executed slice: [2, 5) of the predicted horizon
CAMERAS = ["front", "wrist"]


@pytest.fixture(scope="module")
def setup(demo_store, tmp_path_factory, run_config):
    policy = MLPPolicyConfig(
        n_obs_steps=N_OBS, horizon=HORIZON, n_action_steps=N_ACT, hidden_dims=[32], d_feature=16
    )
    out = tmp_path_factory.mktemp("parity")
    result = fit(run_config(demo_store, out, policy, steps=10, val_ratio=0.0))
    trained = load(result.checkpoint)
    data = CachedFeatureData(
        str(demo_store), result.cache, CAMERAS, WindowSpec(N_OBS, HORIZON, N_ACT), val_ratio=0.0
    )
    buffer = ReplayBuffer.open(demo_store)
    # one window per step, in step order (every episode is in the training split): row t is the
    # window whose current step is t
    batch = data.batch("train", torch.arange(buffer.n_steps))

    # the live path: the stored frames of each episode, observed one step at a time
    runner = PolicyRunner(trained, n_envs=1)
    frames = {k: buffer[k][:] for k in (*CAMERAS, "state")}
    histories, starts = [], np.concatenate([[0], buffer.episode_ends[:-1]])
    for first, end in zip(starts, buffer.episode_ends, strict=True):
        runner.reset([0])
        for t in range(first, end):
            runner.observe(0, {k: v[t] for k, v in frames.items()})
            histories.append(list(runner.histories[0]))
    return {
        "trained": trained,
        "data": data,
        "runner": runner,
        "batch": batch,
        "histories": histories,
        "actions": buffer["action"][:],
        "starts": starts,
        "ends": buffer.episode_ends,
    }


def test_cached_windows_and_live_histories_see_the_same_observations(setup):
    batch, runner = setup["batch"], setup["runner"]
    live = runner.features(setup["histories"])
    assert torch.equal(live["state"], batch["obs"]["state"])  # same steps, same padding
    for cam in CAMERAS:
        cached = batch["obs"][cam]
        assert cached.shape == live[cam].shape == (len(setup["histories"]), N_OBS, 96)
        # both are the encoder's float32 output rounded to float16: at most one float16 step apart
        np.testing.assert_allclose(live[cam].numpy(), cached.float().numpy(), rtol=2e-3, atol=1e-3)


def test_training_and_live_paths_predict_the_same_chunk(setup):
    policy, runner, batch = setup["trained"].policy, setup["runner"], setup["batch"]
    from_cache = policy.predict_action(batch["obs"])
    from_live = policy.predict_action(runner.features(setup["histories"]))
    assert from_cache.shape == (len(setup["histories"]), HORIZON, 5)
    np.testing.assert_allclose(from_live.numpy(), from_cache.numpy(), atol=2e-3)
    executed = np.stack(runner.predict(setup["histories"], [0] * len(setup["histories"])))
    # the runner executes exactly [n_obs_steps - 1, n_obs_steps - 1 + n_action_steps)
    np.testing.assert_allclose(executed, from_live[:, N_OBS - 1 : N_OBS - 1 + N_ACT], atol=1e-6)
    np.testing.assert_allclose(executed, from_cache[:, N_OBS - 1 : N_OBS - 1 + N_ACT], atol=2e-3)


def test_executed_slice_is_the_demonstrations_next_actions(setup):
    """The training target's positions that the runner executes hold the demonstration's actions
    of steps t, ..., t + n_action_steps - 1 (the last one repeated past the episode's end)."""
    actions, runner = setup["actions"], setup["runner"]
    expected = np.stack(
        [
            actions[np.minimum(np.arange(t, t + N_ACT), end - 1)]
            for first, end in zip(setup["starts"], setup["ends"], strict=True)
            for t in range(first, end)
        ]
    )
    current = setup["data"].index["train"][:, N_OBS - 1]
    assert torch.equal(current, torch.arange(len(actions)))  # column n_obs_steps - 1 is step t
    target = setup["batch"]["action"]
    np.testing.assert_array_equal(runner.executable(target).numpy(), expected)
    np.testing.assert_array_equal(target[:, N_OBS - 1 : N_OBS - 1 + N_ACT].numpy(), expected)
