"""PolicyRunner: histories, action queues, ensembling, resets and batching, and the same chunks
as the policy's own batch path on the same observations."""

import numpy as np
import pytest
import torch

from s2policy.encoders.s2 import EncoderConfig
from s2policy.policies.artifact import load
from s2policy.policies.diffusion import DiffusionPolicyConfig
from s2policy.policies.mlp import MLPPolicyConfig
from s2policy.policies.runner import ActionQueue, ActionRunner, PolicyRunner, percentiles
from s2policy.training.loop import train


class EchoRunner(ActionRunner):
    """Chunk ``k`` of an env: actions ``[s, s + 1, ...] * 10`` where ``s`` is the newest
    observation's state; records every prediction call (env list, histories)."""

    def __init__(self, n_envs=2, n_obs_steps=2, n_action_steps=3, **kw):
        super().__init__(n_envs, n_obs_steps, n_action_steps, 1, **kw)
        self.calls = []

    def predict(self, histories, envs):
        self.calls.append(
            (list(envs), [[float(h["state"][0]) for h in hist] for hist in histories])
        )
        return [
            (float(hist[-1]["state"][0]) * 10 + np.arange(self.n_action_steps))[:, None]
            for hist in histories
        ]


def obs(*values):
    return [{"state": np.array([v], np.float32)} for v in values]


def test_queue_executes_each_chunk_then_asks_for_the_next():
    r = EchoRunner(n_envs=1)
    r.reset([0])
    got = [r.act(obs(t))[0, 0] for t in range(7)]
    # chunks from the observations of ticks 0, 3, 6, each executed in full
    assert got == [0, 1, 2, 30, 31, 32, 60]
    assert [c[0] for c in r.calls] == [[0], [0], [0]]
    # the first observation of an episode fills the history; later ones shift it
    assert [c[1] for c in r.calls] == [[[0, 0]], [[2, 3]], [[5, 6]]]


def test_reset_between_episodes_clears_history_queue_and_reseeds():
    r = EchoRunner(n_envs=1)
    r.reset([7])
    r.act(obs(1))
    first = torch.rand(3, generator=r.generators[0])
    r.reset([7])
    assert r.ticks == [0] and not r.queues[0].chunks and not r.histories[0]
    assert r.seeds == [7]
    assert torch.equal(torch.rand(3, generator=r.generators[0]), first)  # same seed, same noise
    assert r.act(obs(5))[0, 0] == 50  # a fresh chunk from the new episode's observation
    assert r.calls[-1][1] == [[5, 5]]


def test_batch_of_environments_predicts_only_for_those_that_need_a_chunk():
    r = EchoRunner(n_envs=3, n_action_steps=2)
    r.reset([0, 1, 2])
    r.act(obs(1, 2, 3), active=[True, True, False])
    assert r.calls[-1][0] == [0, 1]  # the inactive env is neither observed nor predicted
    assert not r.histories[2]
    r.reset([0, 1, 2], mask=[True, False, False])  # env 0 starts a new episode mid-chunk
    actions = r.act(obs(4, 5, 6))
    assert r.calls[-1][0] == [0, 2]  # env 1 still has an action queued
    np.testing.assert_array_equal(actions[:, 0], [40, 21, 60])
    assert r.ticks == [1, 2, 1]


def test_temporal_ensembling_mixes_overlapping_chunks():
    r = EchoRunner(n_envs=1, n_action_steps=3, ensemble_decay=0.0, infer_when_remaining=2)
    r.reset([0])
    a0 = r.act(obs(1))[0, 0]  # chunk [10, 11, 12] from tick 0
    a1 = r.act(obs(2))[0, 0]  # remaining 2 -> new chunk [20, 21, 22] from tick 1
    assert len(r.calls) == 2
    assert a0 == 10 and a1 == pytest.approx((11 + 20) / 2)  # equal weights with decay 0
    plain = EchoRunner(n_envs=1, n_action_steps=3, infer_when_remaining=2)
    plain.reset([0])
    plain.act(obs(1))
    assert plain.act(obs(2))[0, 0] == 20  # without ensembling the newest chunk wins


def test_bad_runner_settings():
    with pytest.raises(ValueError, match="infer_when_remaining"):
        EchoRunner(n_action_steps=3, infer_when_remaining=3)
    with pytest.raises(ValueError, match="one seed per environment"):
        EchoRunner(n_envs=2).reset([0])
    with pytest.raises(ValueError, match="ensemble_decay"):
        ActionQueue(-1.0)


def test_percentiles():
    assert percentiles([]) == {}
    p = percentiles(list(range(1, 101)))
    assert p["calls"] == 100 and p["max"] == 100 and p["mean"] == 50.5
    assert p["p50"] == pytest.approx(50.5) and p["p95"] == pytest.approx(95.05)


# ------------------------------------------------------------------ the real policy path
@pytest.fixture(scope="module")
def artifacts(demo_store, tmp_path_factory, run_config):
    mlp = MLPPolicyConfig(horizon=8, n_action_steps=3, hidden_dims=[32], d_feature=16)
    diffusion = DiffusionPolicyConfig(
        horizon=8,
        n_action_steps=3,
        down_dims=[16, 32],
        d_feature=16,
        step_embed_dim=16,
        num_inference_steps=3,
    )
    out = {}
    for name, policy in (("mlp", mlp), ("diffusion", diffusion)):
        cfg = run_config(demo_store, tmp_path_factory.mktemp(name), policy, steps=10)
        out[name] = train(cfg)
    return out


def frames_history(rng, n_obs=2, size=32):
    return [
        {
            "front": rng.integers(0, 256, (size, size, 3), np.uint8),
            "wrist": rng.integers(0, 256, (size, size, 3), np.uint8),
            "state": rng.normal(size=5).astype(np.float32),
        }
        for _ in range(n_obs)
    ]


def test_runner_chunk_equals_the_policy_on_the_same_features(artifacts, rng):
    """The runner's batch (cameras x envs x steps through one encoder call) lines up with what
    the policy sees in training: per camera ``(B, T, D)`` features of each step's frame."""
    trained = load(artifacts["mlp"])
    runner = PolicyRunner(trained, n_envs=2)
    runner.reset([0, 1])
    histories = [frames_history(rng), frames_history(rng)]
    chunks = runner.predict(histories, [0, 1])
    live = runner.live
    obs = {
        cam: torch.stack([torch.stack([live(h[cam][None])[0] for h in hist]) for hist in histories])
        for cam in ("front", "wrist")
    }
    obs["state"] = torch.from_numpy(np.stack([[h["state"] for h in hist] for hist in histories]))
    full = trained.policy.predict_action(obs)
    start = trained.policy.cfg.n_obs_steps - 1
    for k in range(2):
        np.testing.assert_allclose(chunks[k], full[k, start : start + 3].numpy(), atol=2e-5)


def test_runner_act_matches_a_step_by_step_reference(artifacts, rng):
    """act() over an episode = the reference loop: pad the history with the first observation,
    predict from the last n_obs_steps observations whenever the n_action_steps are used up."""
    trained = load(artifacts["mlp"])
    runner = PolicyRunner(trained, n_envs=1)
    runner.reset([0])
    stream = frames_history(rng, n_obs=7)
    got = np.stack([runner.act([o])[0] for o in stream])
    ref_runner = PolicyRunner(load(artifacts["mlp"]), n_envs=1)
    ref_runner.reset([0])
    expected = []
    for t in range(7):
        if t % 3 == 0:
            hist = [stream[max(0, t - 1)], stream[t]]
            chunk = ref_runner.predict([hist], [0])[0]
        expected.append(chunk[t % 3])
    np.testing.assert_allclose(got, np.stack(expected), atol=1e-6)
    assert len(runner.latency["policy_ms"]) == 3 and len(runner.latency["encoder_ms"]) == 3


def test_diffusion_noise_follows_the_episode_seed_not_the_batch(artifacts, rng):
    trained = load(artifacts["diffusion"])
    hist = frames_history(rng)
    other = frames_history(rng)
    alone = PolicyRunner(trained, n_envs=1)
    alone.reset([11])
    a = alone.predict([hist], [0])[0]
    batched = PolicyRunner(trained, n_envs=2)
    batched.reset([5, 11])
    b = batched.predict([other, hist], [0, 1])[1]
    np.testing.assert_allclose(a, b, atol=1e-5)
    reseeded = PolicyRunner(trained, n_envs=1)
    reseeded.reset([12])
    assert not np.allclose(reseeded.predict([hist], [0])[0], a)


def test_runner_options_are_checked_by_the_policy(artifacts):
    mlp = load(artifacts["mlp"])
    with pytest.raises(ValueError, match="no inference steps"):
        PolicyRunner(mlp, num_inference_steps=4)
    with pytest.raises(ValueError, match=r"n_action_steps must be in \[1, 7\]"):
        PolicyRunner(mlp, n_action_steps=8)
    diffusion = load(artifacts["diffusion"])
    runner = PolicyRunner(diffusion, num_inference_steps=2, n_action_steps=5)
    assert runner.describe()["num_inference_steps"] == 2 and runner.n_action_steps == 5
    assert mlp.encoder.config == EncoderConfig(backbone="vit_nano", scales=(32, 64))
