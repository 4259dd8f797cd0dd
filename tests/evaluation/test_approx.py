"""The S² paper's feature-approximation test: a ridge map's held-out explained variance."""

import json

import numpy as np
import pytest

from s2policy.evaluation.approx import (
    ApproxConfig,
    approximation,
    explained_variance,
    linear_r2,
    main,
)


def _split(n):
    idx = np.arange(n)
    return idx[: int(0.8 * n)], idx[int(0.8 * n) :]


def test_a_known_linear_relation_is_explained_and_noise_is_not():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 12))
    a, b = rng.normal(size=(12, 20)), rng.normal(size=20)
    y = x @ a + b + 0.01 * rng.normal(size=(600, 20))
    train, test = _split(600)
    r2, _ = linear_r2(x[train], y[train], x[test], y[test])
    assert r2 > 0.999, r2
    noise = rng.normal(size=(600, 20))  # independent of x
    r2_noise, _ = linear_r2(x[train], noise[train], x[test], noise[test])
    assert abs(r2_noise) < 0.05, r2_noise


def test_the_reverse_direction_sees_what_the_target_dropped():
    # The target keeps 3 of the source's 8 independent dimensions: forward exact, reverse ~3/8.
    rng = np.random.default_rng(1)
    source = rng.normal(size=(2000, 8))
    target = source[:, :3] @ rng.normal(size=(3, 3))
    train, test = _split(2000)
    out = approximation(source, target, train, test)
    assert out["r2"] > 0.999
    assert 0.3 < out["reverse_r2"] < 0.45, out


def test_explained_variance_is_variance_weighted():
    y = np.c_[np.linspace(-1, 1, 50), np.linspace(-1e-3, 1e-3, 50)]
    pred = np.c_[y[:, 0], np.zeros(50)]  # the tiny dimension missed entirely
    # The mean of per-dimension R² would be 0.5; by variance the miss hardly counts.
    assert explained_variance(y, pred) > 0.999
    assert explained_variance(y, y) == 1.0
    with pytest.raises(ValueError, match="do not vary"):
        explained_variance(np.ones((5, 2)), np.ones((5, 2)))


def test_bad_inputs_are_one_sentence():
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError, match="same store"):
        approximation(rng.normal(size=(10, 2)), rng.normal(size=(9, 2)), *_split(9))
    with pytest.raises(ValueError, match="too few frames"):
        linear_r2(*(rng.normal(size=(3, 2)),) * 4)
    with pytest.raises(ValueError, match="sources"):
        ApproxConfig(sources=[])
    with pytest.raises(ValueError, match="val_ratio"):
        ApproxConfig(val_ratio=1.0)


def test_command_on_two_caches_of_a_store(demo_store, tmp_path, capsys):
    main([f"dataset={demo_store}", "sources=[nano_s2]", "target=nano", "weights=null",
          f"out={tmp_path}"])  # fmt: skip
    result = json.loads((tmp_path / "approx.json").read_text())
    row = result["rows"][0]
    assert row["source"] == "nano_s2" and result["target_encoder"]["backbone"] == "vit_nano"
    # nano_s2's features hold nano's single-scale features plus the zoomed scale: the map from
    # S² to single scale is near exact (the first half of the S² features *are* them).
    assert row["r2"] > 0.95 and row["reverse_r2"] < row["r2"], row
    assert "| nano_s2 |" in (tmp_path / "approx.md").read_text()
    assert "R² source → nano" in capsys.readouterr().out
