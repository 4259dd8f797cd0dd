"""The oracle ceiling: the same policy given the privileged object state instead of images."""

import numpy as np
import pytest

from s2policy.data.privileged import PRIVILEGED, oracle_features, oracle_keys
from s2policy.encoders.s2 import EncoderConfig
from s2policy.evaluation.config import EvalConfig
from s2policy.evaluation.report import build_rows
from s2policy.evaluation.rollout import evaluate
from s2policy.policies.artifact import load
from s2policy.policies.mlp import MLPPolicyConfig
from s2policy.robot.run import check_robot
from s2policy.training.loop import train

ORACLE = EncoderConfig(backbone="oracle")


def test_oracle_vector_keys_and_yaw_symmetry():
    keys = oracle_keys(["front", "cube_pos", "cube_quat", "cube_yaw", "cube_half", "goal_pos"])
    assert keys == ["cube_half", "cube_pos", "cube_yaw", "goal_pos"]
    step = {"cube_pos": np.array([0.1, -0.2, 0.02]), "cube_yaw": np.float32(0.3),
            "cube_half": np.float32(0.02), "goal_pos": np.array([0.0, 0.1, 0.02])}  # fmt: skip
    one = oracle_features(step, keys)
    assert one.shape == (1 + 3 + 2 + 3,) and one.dtype == np.float32
    turned = oracle_features({**step, "cube_yaw": np.float32(0.3 + np.pi / 2)}, keys)
    np.testing.assert_allclose(turned, one, atol=1e-6)  # a cube turned by 90° looks the same
    other = oracle_features({**step, "cube_yaw": np.float32(0.5)}, keys)
    assert not np.allclose(other, one)
    batch = oracle_features({k: np.stack([v, v]) for k, v in step.items()}, keys)
    np.testing.assert_allclose(batch, np.stack([one, one]))  # one step = one row of a batch
    with pytest.raises(ValueError, match=r"needs the privileged state \['goal_pos'\]"):
        oracle_features({k: v for k, v in step.items() if k != "goal_pos"}, keys)


@pytest.fixture(scope="module")
def oracle_run(demo_store, tmp_path_factory, run_config):
    policy = MLPPolicyConfig(horizon=8, n_action_steps=4, hidden_dims=[64], d_feature=32)
    out = tmp_path_factory.mktemp("oracle")
    return train(run_config(demo_store, out, policy, encoder=ORACLE, steps=40))


def test_oracle_trains_on_the_stores_privileged_state(oracle_run):
    trained = load(oracle_run)
    assert trained.is_oracle and trained.cameras == []
    assert trained.oracle_keys == ["cube_half", "cube_pos", "cube_yaw"]
    assert trained.shape_meta["features"] == {PRIVILEGED: [6]}
    assert PRIVILEGED in trained.normalizer


def test_oracle_evaluates_on_the_envs_privileged_state(oracle_run, tmp_path):
    cfg = EvalConfig(checkpoint=str(oracle_run), n_episodes=2, n_envs=2, n_videos=0,
                     device="cpu", max_episode_steps=6, output_dir=str(tmp_path))  # fmt: skip
    results = evaluate(cfg)
    assert results["encoder"]["backbone"] == "oracle" and results["encoder"]["params"] == 0
    assert results["n_episodes"] == 2 and results["latency"]["policy_ms"]["calls"] >= 2
    assert results["latency"]["encoder_ms"] == {}  # no image encoder ran


def test_oracle_cannot_run_on_a_robot(oracle_run):
    spec = {"cameras": ["front", "wrist"], "image_size": [32, 32], "action_dim": 5}
    with pytest.raises(ValueError, match="oracle policy needs the simulator's privileged"):
        check_robot(spec, load(oracle_run))


def _result(backbone, successes, n=100, policy="mlp"):
    return {"task": "cube_pick", "dataset": "d.zarr", "demos": 50, "policy": policy,
            "encoder": {"backbone": backbone, "scales": [64], "weights": None, "params": 1,
                        "gflops_per_image": 0.1},
            "successes": successes, "n_episodes": n, "success_rate": successes / n,
            "latency": {}}  # fmt: skip


def test_report_normalizes_between_blind_and_oracle():
    rows = build_rows([_result("none", 10), _result("oracle", 90), _result("vit_micro", 50),
                       _result("vit_micro", 50, policy="diffusion")])  # fmt: skip
    by = {(r["backbone"], r["policy"]): r for r in rows}
    assert by[("vit_micro", "mlp")]["normalized"] == pytest.approx(0.5)
    assert by[("blind (state only)", "mlp")]["normalized"] == 0.0
    assert by[("oracle (privileged state)", "mlp")]["normalized"] == 1.0
    assert by[("vit_micro", "diffusion")]["normalized"] is None  # no floor/ceiling of its own


def test_recipes_stay_apart_and_normalize_within_their_execution():
    def run(backbone, successes, n_action_steps, views=0, pool="cls", seed=0, **more):
        r = _result(backbone, successes) | {"train_seed": seed}
        r["encoder"]["pool"] = pool
        r["eval"] = {"n_action_steps": n_action_steps, "ensemble_decay": None}
        return r | {"augment_views": views} | more

    rows = build_rows(
        [
            run("none", 10, 8), run("oracle", 90, 8), run("vit_micro", 50, 8),
            run("none", 10, 1), run("oracle", 100, 1), run("vit_micro", 60, 1),
            run("vit_micro", 73, 1, views=4), run("vit_micro", 37, 1, pool="tokens"),
            run("oracle", 100, 1, views=4, seed=1),  # no images: the views do not apply to it
            run("vit_micro", 69, 1, pool="tokens", spatial_head="softmax"),
            run("vit_micro", 71, 1, pool="tokens", spatial_head="softmax", select="rollout"),
            run("vit_micro", 60, 1, spatial_head="softmax"),  # pooled: the head does not apply
            run("oracle", 80, 1, horizon=2), run("vit_micro", 45, 1, horizon=2),
            run("vit_micro", 60, 1, horizon=16),  # recorded default: the exec 1 row
        ]
    )  # fmt: skip
    by = {(r["backbone"], r["recipe"]): r for r in rows}
    assert by[("vit_micro", "exec 8")]["normalized"] == pytest.approx(0.5)
    assert by[("vit_micro", "exec 1")]["normalized"] == pytest.approx(50 / 90)
    assert by[("vit_micro", "aug 4, exec 1")]["normalized"] == pytest.approx(63 / 90)
    assert by[("vit_micro", "pool tokens, exec 1")]["success"] == pytest.approx(0.37)
    assert by[("vit_micro", "pool tokens softmax, exec 1")]["success"] == pytest.approx(0.69)
    selected = by[("vit_micro", "pool tokens softmax, select rollout, exec 1")]
    assert selected["normalized"] == pytest.approx(61 / 90)  # blind/oracle of its execution
    assert by[("vit_micro", "exec 1")]["episodes"] == 300  # the pooled run joins its recipe
    oracle = by[("oracle (privileged state)", "exec 1")]
    assert oracle["episodes"] == 200 and oracle["seeds"] == 2
    # Another prediction horizon is another row, normalized by the blind/oracle of its horizon
    # (no blind at horizon 2: no floor, no normalized score).
    short = by[("vit_micro", "horizon 2, exec 1")]
    assert short["success"] == pytest.approx(0.45) and short["normalized"] is None
    assert by[("oracle (privileged state)", "horizon 2, exec 1")]["episodes"] == 100
    assert len(rows) == 12
