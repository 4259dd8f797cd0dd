import numpy as np
import pytest

from s2policy.encoders.s2 import EncoderConfig, build_encoder
from s2policy.evaluation.probe import ProbeConfig, main, probe_cache, r2_score, ridge_r2
from s2policy.features.cache import build_cache


def test_linear_target_gives_r2_near_one_and_noise_near_zero():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 20))
    w = rng.normal(size=(20, 3))
    y = x @ w + 0.01 * rng.normal(size=(600, 3))
    r2, _ = ridge_r2(x[:400], y[:400], x[400:], y[400:])
    assert r2 > 0.99
    exact, _ = ridge_r2(x[:400], x[:400] @ w + 5.0, x[400:], x[400:] @ w + 5.0)
    assert exact == pytest.approx(1.0, abs=1e-4)  # an exact linear function (with an offset)
    # Scored on the held-out rows: a fit that is perfect on the training rows says nothing of
    # held-out targets unrelated to the features.
    r2, _ = ridge_r2(x[:400], y[:400], x[400:], rng.normal(size=(200, 3)))
    assert r2 < 0.1
    noise = rng.normal(size=(600, 2))
    r2, _ = ridge_r2(x[:400], noise[:400], x[400:], noise[400:])
    assert abs(r2) < 0.1


def test_r2_score_definition():
    y = np.array([1.0, 2.0, 3.0])
    assert r2_score(y, y) == 1.0 and r2_score(y, np.full(3, 2.0)) == pytest.approx(0.0)


def test_too_few_samples():
    with pytest.raises(ValueError, match="too few samples"):
        ridge_r2(np.zeros((3, 2)), np.zeros(3), np.zeros((3, 2)), np.zeros(3))


def test_probe_on_a_cache(demo_store, capsys, monkeypatch):
    from s2policy.evaluation import probe

    cache = build_cache(demo_store, build_encoder(EncoderConfig(backbone="vit_nano", scales=(32,))))
    r2 = probe_cache(demo_store, cache)
    assert set(r2) == {"object_pos", "gripper"}
    # The gripper gap is plain to see in the wrist camera, even through random features ...
    assert r2["gripper"] > 0.8, r2
    # ... and the same probe of the same features against shuffled targets (the rows'
    # correspondence broken) scores about nothing on the held-out episodes.
    targets = probe.probe_targets
    rng = np.random.default_rng(0)
    monkeypatch.setattr(
        probe, "probe_targets", lambda buf: {k: rng.permutation(v) for k, v in targets(buf).items()}
    )
    control = probe_cache(demo_store, cache)
    assert control["gripper"] < 0.3 and r2["gripper"] - control["gripper"] > 0.5, (r2, control)
    monkeypatch.undo()
    main([f"dataset={demo_store}", "encoders=[nano]"])
    row = capsys.readouterr().out.splitlines()[-1]
    assert row.startswith("| nano | random |") and float(row.split("|")[-2]) > 0.8, row


def test_constant_target_dimensions_are_left_out(tmp_path):
    from s2policy.data.store import ReplayBuffer
    from s2policy.evaluation.probe import probe_targets

    buf = ReplayBuffer.create(tmp_path / "s.zarr")
    rng = np.random.default_rng(0)
    for _ in range(2):
        cube = rng.normal(size=(5, 3)).astype(np.float32)
        goal = np.tile(np.float32([0.1, -0.05, 0.02]), (5, 1))
        goal[:, 0] += rng.normal() * 0.01  # the goal moves between episodes in x only
        state = rng.normal(size=(5, 5)).astype(np.float32)
        buf.add_episode({"cube_pos": cube, "goal_pos": goal, "state": state})
    targets = probe_targets(buf)
    assert targets["object_pos"].shape == (10, 4)  # cube x, y, z and goal x


def test_encoder_config_is_composed_by_hydra():
    from s2policy.evaluation.probe import encoder_config

    cfg = encoder_config("micro_s2", "random")
    assert isinstance(cfg, EncoderConfig) and cfg.backbone == "vit_micro" and cfg.weights is None
    assert list(cfg.scales) == [64, 128]
    assert encoder_config("nano", "mae_vit_micro").weights == "mae_vit_micro"
    # By default the config's own weights (the default used to be [null], which silently
    # replaced them by random init); a weights group gives each backbone its own file.
    assert encoder_config("micro_s2").weights is None
    assert encoder_config("micro_s2", "mae").weights == "mae_vit_micro"
    assert encoder_config("mini", "mae4").weights == "mae4_vit_mini"
    assert ProbeConfig().weights == []


def test_cli_bad_keys_are_clear_errors(capsys):
    with pytest.raises(SystemExit):
        main(["encodrs=[nano]"])
    assert "Key 'encodrs' not in 'ProbeConfig'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["encoders=[no_such_encoder]"])
    assert "no_such_encoder" in capsys.readouterr().err


def test_a_target_that_does_not_vary_in_the_held_out_rows_is_not_scored():
    """An object that never moves in the test episodes: its R² is undefined (1 - x / ~0), and
    scoring it would swamp the mean (it gave about -7e9 on a 6-episode store)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    moving = x @ rng.normal(size=5)
    still = np.r_[rng.normal(size=150), np.full(50, 0.3) + 1e-9 * rng.normal(size=50)]
    r2, _ = ridge_r2(x[:150], np.c_[moving, still][:150], x[150:], np.c_[moving, still][150:])
    assert r2 == pytest.approx(1.0, abs=1e-6)
    r2, _ = ridge_r2(x[:150], still[:150, None], x[150:], still[150:, None])
    assert np.isnan(r2)


def test_a_store_of_two_episodes_holds_one_out_and_one_episode_gives_no_probe(tmp_path):
    from s2policy.data.store import ReplayBuffer

    rng = np.random.default_rng(0)
    buf = ReplayBuffer.create(tmp_path / "s.zarr", attrs={"cameras": ["front"]})
    for _ in range(2):  # val_ratio 0.2 of 2 episodes rounds to none: still one held out
        buf.add_episode(
            {
                "front": rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8),
                "cube_pos": rng.normal(size=(6, 3)).astype(np.float32),
                "state": rng.normal(size=(6, 5)).astype(np.float32),
            }
        )
    enc = build_encoder(EncoderConfig(backbone="vit_nano", scales=(32,)))
    scores = probe_cache(buf.path, build_cache(buf.path, enc), val_ratio=0.2)
    assert "object_pos" in scores and all(np.isfinite(v) for v in scores.values())
    one = ReplayBuffer.create(tmp_path / "one.zarr", attrs={"cameras": ["front"]})
    one.add_episode({k: v[:6] for k, v in buf.get_episode(0).items()})
    assert probe_cache(one.path, build_cache(one.path, enc)) == {}
