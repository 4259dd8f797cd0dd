"""``train.select``: the best weights by validation loss or by rollouts, kept in ``<run>/best/``."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from s2policy.evaluation import rollout
from s2policy.evaluation.config import EvalConfig
from s2policy.evaluation.rollout import evaluate
from s2policy.policies.artifact import load, read_info
from s2policy.policies.mlp import MLPPolicyConfig
from s2policy.training.config import RunConfig, TrainConfig
from s2policy.training.loop import fit
from tests.conftest import BLIND


def small_mlp(**kw):
    return MLPPolicyConfig(**{"horizon": 8, "n_action_steps": 4, "hidden_dims": [32], **kw})


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_val_loss_selection_keeps_the_lowest_validation_loss(demo_store, tmp_path, run_config):
    """Every ``val_every`` steps the validation loss is compared with the best so far; the
    weights of the lowest (the later one on ties) are ``best/``, which the run returns (what its
    evaluation uses); ``checkpoint/`` still holds the last step for a resume."""
    cfg = run_config(
        demo_store, tmp_path, small_mlp(), BLIND, steps=60, val_every=10, val_ratio=0.34,
        lr=3e-2, select="val_loss",
    )  # fmt: skip
    result = fit(cfg)
    assert result.checkpoint == tmp_path / "best"
    vals = [(r["step"], r["val_loss"]) for r in records(tmp_path) if "val_loss" in r]
    assert [s for s, _ in vals] == [10, 20, 30, 40, 50, 60]
    low = min(v for _, v in vals)
    best_step = max(s for s, v in vals if v == low)
    info = read_info(tmp_path / "best")
    assert info["step"] == best_step
    assert info["selection"] == {"criterion": "val_loss", "score": -low, "step": best_step}
    assert all(r["best_step"] <= r["step"] for r in records(tmp_path) if "best_step" in r)
    assert read_info(tmp_path / "checkpoint")["step"] == 60
    assert not (tmp_path / "best" / "training_state.pt").exists()
    assert load(tmp_path / "best").step == best_step


def test_rollout_selection_scores_disjoint_seeds_and_leaves_training_unchanged(
    demo_store, tmp_path, run_config, monkeypatch
):
    """``select=rollout`` plays ``select_episodes`` episodes from ``select_seed`` at each
    validation with the run's evaluation settings, logs their success rate and keeps the best
    weights; training itself is untouched (its last weights equal a run without selection), and
    the evaluation of ``best/`` runs on its own seeds."""
    eval_cfg = EvalConfig(n_episodes=2, n_envs=2, max_episode_steps=6, n_videos=0)
    # dropout draws from the global torch RNG: rollouts must not move it
    policy = small_mlp(dropout=0.3)
    plain = run_config(demo_store, tmp_path / "plain", policy, BLIND, steps=20, val_every=10)
    plain = dataclasses.replace(plain, eval=eval_cfg)
    fit(plain)
    play = rollout.play

    def drawing_play(*args, **kw):  # a rollout that draws from the global RNG (any sampler)
        torch.rand(3)
        return play(*args, **kw)

    monkeypatch.setattr(rollout, "play", drawing_play)
    train = dataclasses.replace(plain.train, select="rollout", select_episodes=3, select_seed=7)
    cfg = dataclasses.replace(plain, train=train, output_dir=str(tmp_path / "sel"))
    result = fit(cfg)
    assert result.checkpoint == tmp_path / "sel" / "best"
    rec = [r for r in records(tmp_path / "sel") if "select_success" in r]
    assert [r["step"] for r in rec] == [10, 20]
    assert all(r["select_success"] in (0, 1 / 3, 2 / 3, 1) for r in rec)
    selection = read_info(result.checkpoint)["selection"]
    assert selection["criterion"] == "rollout" and selection["seeds"] == [7, 8, 9]
    best = max(r["select_success"] for r in rec)
    assert selection["score"] == best
    assert selection["step"] == max(r["step"] for r in rec if r["select_success"] == best)
    last = load_file(tmp_path / "sel" / "checkpoint" / "model.safetensors")
    for k, v in load_file(tmp_path / "plain" / "checkpoint" / "model.safetensors").items():
        torch.testing.assert_close(last[k], v, rtol=0, atol=0)
    state = torch.load(tmp_path / "sel" / "checkpoint" / "training_state.pt", weights_only=True)
    assert state["select"] == selection

    results = evaluate(dataclasses.replace(eval_cfg, checkpoint=str(result.checkpoint)))
    assert results["eval"]["seeds"] == [100_000, 100_001]
    assert results["checkpoint"].endswith("best") and results["select"] == "rollout"
    assert results["horizon"] == cfg.policy.horizon  # the chunks it predicts (report recipe)
    last = evaluate(dataclasses.replace(eval_cfg, checkpoint=str(tmp_path / "sel")))
    assert last["checkpoint"].endswith("checkpoint") and last["select"] == "last"


def test_selection_resumes_with_its_best_score(demo_store, tmp_path, run_config):
    """A resumed run continues from the saved best score: ``best/`` is replaced only by weights
    at least as good as every earlier one."""
    cfg = run_config(
        demo_store, tmp_path, small_mlp(), BLIND, steps=30, val_every=10, val_ratio=0.34,
        select="val_loss",
    )  # fmt: skip
    fit(cfg)
    first = read_info(tmp_path / "best")["selection"]
    longer = dataclasses.replace(cfg.train, steps=60, resume=True)
    fit(dataclasses.replace(cfg, train=longer))
    vals = [r["val_loss"] for r in records(tmp_path) if "val_loss" in r]
    assert len(vals) == 6
    final = read_info(tmp_path / "best")["selection"]
    assert final["score"] == -min(vals) >= first["score"]


def test_bad_selection_settings_are_refused_in_one_sentence():
    with pytest.raises(ValueError, match="unknown train.select 'best'"):
        TrainConfig(select="best")
    with pytest.raises(ValueError, match="select=val_loss needs validation episodes"):
        TrainConfig(select="val_loss", val_ratio=0.0)
    with pytest.raises(ValueError, match="select_episodes must be >= 1"):
        TrainConfig(select="rollout", select_episodes=0)
    with pytest.raises(ValueError, match=r"on evaluation seeds \(100010..100029\)"):
        RunConfig(
            policy=small_mlp(),
            train=TrainConfig(select="rollout", select_seed=100_010),
            eval=EvalConfig(n_episodes=100),
        )


def test_val_loss_selection_without_validation_windows_fails_in_one_sentence(
    demo_store, tmp_path, run_config
):
    """A val_ratio that rounds to no validation episode (6 episodes x 0.05) is refused before
    training instead of failing at the first validation."""
    cfg = run_config(demo_store, tmp_path, small_mlp(), BLIND, val_ratio=0.05, select="val_loss")
    with pytest.raises(ValueError, match="select=val_loss needs validation windows"):
        fit(cfg)


def test_overwrite_drops_the_replaced_runs_best_weights(demo_store, tmp_path, run_config):
    cfg = run_config(
        demo_store, tmp_path, small_mlp(), BLIND, steps=20, val_ratio=0.34, select="val_loss"
    )
    fit(cfg)
    assert (tmp_path / "best").is_dir()
    again = dataclasses.replace(cfg.train, select="last", overwrite=True)
    assert fit(dataclasses.replace(cfg, train=again)).checkpoint == tmp_path / "checkpoint"
    assert not (tmp_path / "best").exists()


def test_runs_from_before_the_spatial_head_field_still_resume(demo_store, tmp_path, run_config):
    """A checkpoint whose recorded config has no policy.spatial_head/keypoints (written before
    they existed) resumes with today's config: without token maps the head does not apply."""
    cfg = run_config(demo_store, tmp_path, small_mlp(), BLIND, steps=20)
    fit(cfg)
    path = tmp_path / "checkpoint" / "policy.json"
    info = json.loads(path.read_text())
    for key in ("spatial_head", "keypoints"):
        del info["config"]["policy"][key], info["policy"][key]
    path.write_text(json.dumps(info))
    longer = dataclasses.replace(cfg.train, steps=30, resume=True)
    fit(dataclasses.replace(cfg, train=longer))
    assert read_info(tmp_path / "checkpoint")["step"] == 30
