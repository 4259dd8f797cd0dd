import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from safetensors.torch import load_file

from s2policy.encoders.s2 import EncoderConfig
from s2policy.features.cache import CacheError, list_caches
from s2policy.policies.artifact import load, read_info
from s2policy.policies.diffusion import DiffusionPolicyConfig
from s2policy.policies.mlp import MLPPolicyConfig
from s2policy.policies.runner import PolicyRunner
from s2policy.task import TaskConfig
from s2policy.training.loop import train

ROOT = Path(__file__).resolve().parents[2]
BLIND = EncoderConfig(backbone="none")


def small_mlp(**kw):
    base = dict(horizon=8, n_action_steps=4, hidden_dims=[64, 64], d_feature=32)
    return MLPPolicyConfig(**{**base, **kw})


def small_diffusion(**kw):
    base = dict(horizon=8, n_action_steps=4, down_dims=[32, 64], d_feature=32, step_embed_dim=32)
    return DiffusionPolicyConfig(**{**base, **kw})


def losses(out):
    return [
        r["train_loss"]
        for r in map(json.loads, (out / "metrics.jsonl").read_text().split("\n")[:-1])
        if "train_loss" in r
    ]


@pytest.mark.parametrize("policy, steps", [(small_mlp(), 300), (small_diffusion(), 400)])
def test_policy_overfits_a_tiny_dataset(demo_store, tmp_path, policy, steps, run_config):
    cfg = run_config(
        demo_store,
        tmp_path,
        policy,
        steps=steps,
        lr=3e-3,
        val_ratio=0.0,
        log_every=20,
        ckpt_every=1000,
    )
    train(cfg)
    curve = losses(tmp_path)
    assert curve[0] / curve[-1] >= 10, curve


def test_training_builds_the_cache_once_and_writes_the_run(demo_store, tmp_path, run_config):
    ckpt = train(run_config(demo_store, tmp_path / "a", small_mlp()))
    caches = list_caches(demo_store)
    info = read_info(ckpt)
    assert info["cache_fingerprint"] in [c.fingerprint for c in caches]
    assert info["encoder"]["spec"]["scales"] == [32, 64] and info["step"] == 40
    assert info["shape_meta"] == {
        "features": {"front": [96], "wrist": [96]},
        "state": [5],
        "action": [5],
    }
    assert (tmp_path / "a" / "config.json").is_file()
    train(run_config(demo_store, tmp_path / "b", small_mlp()))
    assert len(list_caches(demo_store)) == len(caches)  # reused, not rebuilt


def test_checkpoint_round_trip_gives_identical_actions(demo_store, tmp_path, run_config):
    ckpt = train(run_config(demo_store, tmp_path, small_diffusion()))
    loaded = load(ckpt)
    obs = {
        "front": torch.randn(3, 2, 96),
        "wrist": torch.randn(3, 2, 96),
        "state": torch.randn(3, 2, 5),
    }
    again = load(tmp_path)  # the run directory works too
    a = loaded.policy.predict_action(obs, generator=torch.Generator().manual_seed(0))
    b = again.policy.predict_action(obs, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert a.shape == (3, 8, 5)
    raw = load(ckpt, use_ema=False).policy.predict_action(
        obs, generator=torch.Generator().manual_seed(0)
    )
    assert not torch.equal(raw, a)  # EMA weights differ from the raw ones
    assert PolicyRunner(loaded).executable(a).shape == (3, 4, 5)


def test_ddim_step_count_changes_sampling(demo_store, tmp_path, run_config):
    policy = load(train(run_config(demo_store, tmp_path, small_diffusion()))).policy
    obs = {
        "front": torch.randn(2, 2, 96),
        "wrist": torch.randn(2, 2, 96),
        "state": torch.randn(2, 2, 5),
    }
    calls = []
    policy.model.register_forward_hook(lambda *a: calls.append(1))
    outs = {}
    for steps in (1, 4, 16):
        calls.clear()
        policy.set_inference_steps(steps)
        outs[steps] = policy.predict_action(obs, generator=torch.Generator().manual_seed(0))
        assert len(calls) == steps
    assert not torch.allclose(outs[1], outs[16])


def test_resume_after_interruption_matches_an_uninterrupted_run(demo_store, tmp_path, run_config):
    policy = small_diffusion()
    train(run_config(demo_store, tmp_path / "full", policy, steps=30, ckpt_every=10))

    class Interrupt(Exception):
        pass

    def stop_at_15(record):
        if record["step"] == 15:
            raise Interrupt

    cut = run_config(demo_store, tmp_path / "cut", policy, steps=30, ckpt_every=10, log_every=5)
    with pytest.raises(Interrupt):
        train(cut, on_log=stop_at_15)
    assert read_info(tmp_path / "cut")["step"] == 10
    cut.train.resume = True
    train(cut)
    full = load_file(str(tmp_path / "full" / "checkpoint" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "cut" / "checkpoint" / "model.safetensors"))
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], rtol=0, atol=0, msg=key)
    ema_a = load_file(str(tmp_path / "full" / "checkpoint" / "ema.safetensors"))
    ema_b = load_file(str(tmp_path / "cut" / "checkpoint" / "ema.safetensors"))
    for key in ema_a:
        torch.testing.assert_close(ema_b[key], ema_a[key], rtol=0, atol=0, msg=key)


def test_blind_policy_needs_no_cache(demo_store, tmp_path, run_config):
    ckpt = train(run_config(demo_store, tmp_path, small_mlp(), BLIND))
    info = read_info(ckpt)
    assert info["encoder"] is None and info["shape_meta"]["features"] == {}
    out = load(ckpt).policy.predict_action({"state": torch.randn(1, 2, 5)})
    assert out.shape == (1, 8, 5)


def test_nan_actions_in_a_store_are_refused(demo_store, tmp_path, run_config):
    bad = tmp_path / "bad.zarr"
    import shutil

    shutil.copytree(demo_store, bad)
    shutil.rmtree(bad / "features", ignore_errors=True)
    arr = zarr.open_group(str(bad), mode="r+")["data/action"]
    values = arr[:]
    values[7, 2] = np.nan
    arr[:] = values
    with pytest.raises(ValueError, match=r"'action' contains NaN or inf \(first at step 7"):
        train(run_config(bad, tmp_path / "run", small_mlp(), BLIND))
    state = zarr.open_group(str(bad), mode="r+")["data/state"]
    values = state[:]
    values[3, 0] = np.inf
    state[:] = values
    arr[:] = np.nan_to_num(arr[:])
    with pytest.raises(ValueError, match="'state' contains NaN or inf"):
        train(run_config(bad, tmp_path / "run", small_mlp(), BLIND))


def test_the_run_takes_the_task_settings_of_its_dataset(demo_store, tmp_path, run_config):
    cfg = run_config(demo_store, tmp_path / "run", small_mlp(), BLIND, steps=2)
    cfg.task = TaskConfig(env={"image_size": (64, 64), "shadow_size": 512})  # not the data's
    info = read_info(train(cfg))
    assert info["task"]["env"]["image_size"] == [32, 32]  # what evaluation must render
    assert info["task"]["env"]["shadow_size"] == 0
    cfg.task = TaskConfig(name="push")
    with pytest.raises(ValueError, match="holds demonstrations of task 'cube_pick'.*'push'"):
        train(cfg)


def test_missing_camera_is_a_clear_error(demo_store, tmp_path, run_config):
    with pytest.raises(ValueError, match=r"camera\(s\) \['top'\].*has \['front', 'wrist'\]"):
        train(run_config(demo_store, tmp_path, small_mlp(cameras=["top"])))


def test_cache_of_another_encoder_is_refused_when_not_building(demo_store, tmp_path, run_config):
    cfg = run_config(demo_store, tmp_path, small_mlp(), build_cache=False)
    cfg.encoder.scales = (32, 64, 96)
    with pytest.raises(
        CacheError, match=r"no feature cache.*scales=\[32, 64, 96\].*existing caches"
    ):
        train(cfg)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: small_mlp(n_action_steps=9), "horizon 8 must cover"),
        (lambda: small_diffusion(horizon=7), "divisible by 2"),
        (lambda: small_diffusion(prediction_type="v"), "prediction_type"),
        (lambda: MLPPolicyConfig(name="transformer"), "unknown policy 'transformer'"),
        (lambda: small_diffusion(num_inference_steps=0), "num_inference_steps"),
    ],
)
def test_bad_policy_configs(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def train_cmd(out, *extra, launcher=(sys.executable,)):
    return [*launcher, str(ROOT / "train_policy.py"), f"hydra.run.dir={out}", *extra]


def test_cli_config_typo_fails_at_start(tmp_path):
    proc = subprocess.run(
        train_cmd(tmp_path, "policy.hiden_dims=[8]"), capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode != 0 and "hiden_dims" in proc.stderr
    proc = subprocess.run(
        train_cmd(tmp_path, "train.lr=-1"), capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode != 0 and "train.lr must be > 0" in proc.stderr


@pytest.mark.slow
def test_torchrun_ddp_trains(demo_store, tmp_path, run_config):
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29544",
    ]
    args = [
        f"dataset={demo_store}",
        "task.env.image_size=[32,32]",
        "task.env.shadow_size=0",
        "encoder=nano_s2",
        "train.steps=20",
        "train.device=cpu",
        "train.log_every=10",
        "train.batch_size=16",
        "policy.hidden_dims=[32]",
        "policy.horizon=8",
        "policy.n_action_steps=4",
    ]
    proc = subprocess.run(
        train_cmd(tmp_path, *args, launcher=torchrun),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_info(tmp_path)["step"] == 20
    assert load(tmp_path).policy.cfg.hidden_dims == [32]
