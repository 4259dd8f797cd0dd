"""An evaluation's records (``n_records``): each recorded episode's closed loop in
``records.zarr``, aligned step by step with what was executed, and nothing else changes."""

import numpy as np
import pytest

from s2policy.data.store import ReplayBuffer
from s2policy.encoders.s2 import EncoderConfig
from s2policy.evaluation.records import RECORDS
from s2policy.evaluation.rollout import EvalConfig, evaluate
from s2policy.policies.mlp import MLPPolicyConfig
from s2policy.training.loop import train

N_ACTION_STEPS = 3


@pytest.fixture(scope="module")
def blind_ckpt(demo_store, tmp_path_factory, run_config):
    """A state-only MLP (fast): horizon 6 from 2 observation steps, 3 actions per chunk."""
    policy = MLPPolicyConfig(
        horizon=6, n_action_steps=N_ACTION_STEPS, hidden_dims=[32], d_feature=16
    )
    blind = EncoderConfig(backbone="none")
    return train(run_config(demo_store, tmp_path_factory.mktemp("blind"), policy, blind, steps=20))


def eval_cfg(ckpt, out, **kw):
    base = dict(
        checkpoint=str(ckpt),
        n_episodes=3,
        seed=700,
        n_envs=2,
        n_videos=0,
        max_episode_steps=10,
        device="cpu",
        output_dir=str(out),
    )
    return EvalConfig(**{**base, **kw})


def test_records_hold_the_closed_loop_and_change_nothing_else(blind_ckpt, tmp_path):
    plain = evaluate(eval_cfg(blind_ckpt, tmp_path / "plain"))
    recorded = evaluate(eval_cfg(blind_ckpt, tmp_path / "rec", n_records=2))
    assert not (tmp_path / "plain" / RECORDS).exists()
    assert all("record" not in e for e in plain["episodes"])

    def outcome(r):
        return [(e["seed"], e["success"], e["steps"]) for e in r["episodes"]]

    assert outcome(recorded) == outcome(plain)  # recording does not touch the closed loop
    assert set(recorded) == set(plain) and recorded["eval"] == plain["eval"]
    episodes = recorded["episodes"]
    assert "record" in episodes[0] and "record" in episodes[1] and "record" not in episodes[2]

    buf = ReplayBuffer.open(tmp_path / "rec" / RECORDS)
    assert buf.n_episodes == 2
    attrs = buf.attrs
    assert attrs["source"] == "evaluation" and attrs["n_action_steps"] == N_ACTION_STEPS
    assert attrs["cameras"] == ["front", "wrist"] and attrs["control_hz"] > 0
    for k in (0, 1):
        stored = episodes[k]["record"]
        assert buf.get_meta("episode_index")[stored] == k
        assert buf.get_meta("episode_seeds")[stored] == episodes[k]["seed"]
        assert buf.get_meta("episode_success")[stored] == episodes[k]["success"]
        ep = buf.get_episode(stored)
        steps = episodes[k]["steps"]
        assert ep["front"].shape == (steps, 32, 32, 3) and ep["wrist"].dtype == np.uint8
        assert ep["state"].shape == (steps, 5) and ep["action"].shape == (steps, 5)
        assert ep["cube_pos"].shape == (steps, 3)  # the privileged state beside the observation
        assert ep["success"].shape == (steps,) and ep["success"].any() == episodes[k]["success"]
        # A chunk every N_ACTION_STEPS steps: the predicted future from that step (horizon 6
        # from the current of 2 observation steps: 5 actions), whose first N are executed.
        assert ep["predicted"].shape == (steps, 5, 5)
        at = ep["predicted_step"]
        np.testing.assert_array_equal(at, np.arange(steps) // N_ACTION_STEPS * N_ACTION_STEPS)
        for t in range(steps):
            np.testing.assert_array_equal(ep["predicted"][t], ep["predicted"][at[t]])
            np.testing.assert_allclose(ep["action"][t], ep["predicted"][t][t - at[t]], rtol=1e-6)


def test_a_negative_number_of_records_is_refused():
    with pytest.raises(ValueError, match="n_records"):
        EvalConfig(checkpoint="x", n_records=-1)
