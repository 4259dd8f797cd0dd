import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from safetensors.torch import load_file

from s2policy import cli
from s2policy.data.store import ReplayBuffer
from s2policy.encoders.s2 import EncoderConfig, build_encoder
from s2policy.features import cache
from s2policy.features.cache import CacheError, list_caches
from s2policy.policies.artifact import load, read_info
from s2policy.policies.diffusion import DiffusionPolicyConfig
from s2policy.policies.mlp import MLPPolicy, MLPPolicyConfig
from s2policy.policies.runner import PolicyRunner
from s2policy.task import TaskConfig
from s2policy.training.config import TrainConfig
from s2policy.training.dataset import CachedFeatureData, WindowSpec
from s2policy.training.loop import fit, train

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


#: Actions of the demonstrations in "raw units" far from the [-1, 1] the policies work in (metres,
#: radians and gripper metres per step): a policy that forgot to un-normalize is off everywhere.
ACTION_SCALE = np.array([0.02, 0.02, 0.03, 0.2, 0.04], np.float32)
ACTION_OFFSET = np.array([0.1, -0.05, 0.3, 0.0, 0.04], np.float32)


@pytest.fixture(scope="module")
def metric_store(demo_store, tmp_path_factory):
    """``demo_store`` with its actions mapped affinely to raw units (the limits normalizer makes
    the normalized targets, hence training, the same)."""
    path = tmp_path_factory.mktemp("metric") / "cube_pick.zarr"
    shutil.copytree(demo_store, path)  # its caches stay valid: they depend on frames, not actions
    arr = zarr.open_group(str(path), mode="r+")["data/action"]
    arr[:] = arr[:] * ACTION_SCALE + ACTION_OFFSET
    return path


@pytest.mark.parametrize("policy, steps", [(small_mlp(), 300), (small_diffusion(), 400)])
def test_policy_overfits_a_tiny_dataset(metric_store, tmp_path, policy, steps, run_config):
    cfg = run_config(
        metric_store,
        tmp_path,
        policy,
        steps=steps,
        lr=3e-3,
        val_ratio=0.0,
        log_every=20,
        ckpt_every=1000,
    )
    result = fit(cfg)
    curve = losses(tmp_path)
    assert curve[0] / curve[-1] >= 10, curve
    if policy.name != "mlp":  # a few hundred steps leave the diffusion's samples rough
        return
    # the loss is in normalized units; what is executed must reproduce the demonstrations in
    # raw units: every training window's predicted chunk against its target chunk
    trained = load(result.checkpoint)
    windows = WindowSpec(policy.n_obs_steps, policy.horizon, policy.n_action_steps)
    data = CachedFeatureData(cfg.dataset, result.cache, trained.cameras, windows, val_ratio=0.0)
    batch = data.batch("train", torch.arange(len(data)))
    target = batch["action"]
    pred = trained.policy.predict_action(batch["obs"])
    rmse = (pred - target).pow(2).mean((0, 1)).sqrt()  # per action dimension
    spread = target.std((0, 1))
    assert (rmse < 0.35 * spread).all(), (rmse, spread)  # R^2 > 0.88 in every dimension


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


def test_n_demos_trains_on_the_first_episodes_only(demo_store, tmp_path, run_config):
    """Success against demonstrations: one store, its first n episodes (train + validation)."""
    cfg = run_config(demo_store, tmp_path, small_mlp(), BLIND, n_demos=3, val_ratio=0.34)
    result = fit(cfg)
    ends = ReplayBuffer.open(demo_store).episode_ends
    data = CachedFeatureData(cfg.dataset, None, [], WindowSpec(2, 8, 4), 0.34, 0, n_episodes=3)
    assert sorted([*data.train_episodes, *data.val_episodes]) == [0, 1, 2]
    assert int(data.index["train"].max()) < ends[2] and int(data.index["val"].max()) < ends[2]
    trained = load(result.checkpoint)
    assert trained.provenance.demos == 3 and trained.provenance.dataset_episodes == 6
    with pytest.raises(ValueError, match="train.n_demos=7 but .* holds 6 episodes"):
        CachedFeatureData(cfg.dataset, None, [], WindowSpec(2, 8, 4), n_episodes=7)
    with pytest.raises(ValueError, match="n_demos must be >= 1"):
        TrainConfig(n_demos=0)


TOKENS = EncoderConfig(backbone="vit_nano", scales=(32, 64), pool="tokens")


def fit_on_tokens(demo_store, out, run_config, policy):
    """Train ``policy`` 30 steps on ``TOKENS`` features; the loss must fall. Returns the config
    and the result."""
    cfg = run_config(demo_store, out, policy, TOKENS, steps=30, lr=3e-3, val_ratio=0.0, log_every=5)
    result = fit(cfg)
    curve = losses(out)
    assert np.isfinite(curve).all() and curve[-1] < curve[0], curve
    return cfg, result


def test_token_feature_policy_trains_and_pools_tokens_in_any_order(
    demo_store, tmp_path, run_config
):
    """``encoder.pool=tokens``: each camera's ``(N, C)`` token map is reduced by attention
    pooling, which has no positional term (the ViT put the positions into the tokens): the
    tokens' order does not matter, their content does; the runner predicts from live tokens."""
    policy = small_mlp(d_feature=16, pool_heads=4, spatial_head="attention")
    cfg, result = fit_on_tokens(demo_store, tmp_path, run_config, policy)
    trained = load(result.checkpoint)
    assert trained.shape_meta["features"] == {"front": [17, 96], "wrist": [17, 96]}
    # a checkpoint written before policy.spatial_head existed loads with attention pooling
    info = json.loads((result.checkpoint / "policy.json").read_text())
    del info["policy"]["spatial_head"]
    (result.checkpoint / "policy.json").write_text(json.dumps(info))
    trained = load(result.checkpoint)
    assert trained.policy.cfg.spatial_head == "attention"
    windows = WindowSpec(policy.n_obs_steps, policy.horizon, policy.n_action_steps)
    data = CachedFeatureData(cfg.dataset, result.cache, trained.cameras, windows, val_ratio=0.0)
    steps = torch.tensor([0, 20, 40, 60])  # rows are steps (every episode trains)
    obs = data.batch("train", steps)["obs"]
    assert obs["front"].shape == (4, 2, 17, 96)
    out = trained.policy.predict_action(obs)
    assert out.shape == (4, 8, 5) and torch.isfinite(out).all()

    perm = torch.randperm(17, generator=torch.Generator().manual_seed(0))
    shuffled = {k: v if k == "state" else v[:, :, perm] for k, v in obs.items()}
    torch.testing.assert_close(trained.policy.predict_action(shuffled), out, atol=1e-5, rtol=0)
    changed = {k: v.clone() for k, v in obs.items()}
    changed["front"][:, :, 9] = changed["front"][:, :, 3]  # one map token's content
    assert (trained.policy.predict_action(changed) - out).abs().max() > 1e-3

    buffer = ReplayBuffer.open(demo_store)
    runner = PolicyRunner(trained, n_envs=1)
    runner.reset([0])
    starts = np.concatenate([[0], buffer.episode_ends[:-1]])
    histories = []
    for t in steps.tolist():  # an episode's first step is repeated before it
        first = starts[np.searchsorted(buffer.episode_ends, t, side="right")]
        keys = ("front", "wrist", "state")
        histories.append([{k: buffer[k][s] for k in keys} for s in (max(first, t - 1), t)])
    chunks = np.stack(runner.predict(histories, [0] * 4))
    assert chunks.shape == (4, 4, 5)
    np.testing.assert_allclose(chunks, out[:, 1:5].numpy(), atol=2e-3)


def test_spatial_softmax_policy_records_the_token_grid_and_runs_live(
    demo_store, tmp_path, run_config
):
    """``policy.spatial_head=softmax`` on ``encoder.pool=tokens``: the run records each camera's
    token layout (1 class token + the 4 x 4 grid of ``vit_nano`` at 32 px) in the checkpoint,
    the loss falls, the loaded policy rebuilds its heads from it, and the runner's live features
    give the same actions as the cached ones."""
    policy = small_mlp(d_feature=16, spatial_head="softmax", keypoints=8)
    cfg, result = fit_on_tokens(demo_store, tmp_path, run_config, policy)
    info = read_info(result.checkpoint)
    assert info["shape_meta"]["token_layouts"] == {"front": [1, 4, 4], "wrist": [1, 4, 4]}
    trained = load(result.checkpoint)
    assert type(trained.policy.obs_encoder.heads["front"]).__name__ == "SpatialSoftmax"
    windows = WindowSpec(policy.n_obs_steps, policy.horizon, policy.n_action_steps)
    data = CachedFeatureData(cfg.dataset, result.cache, trained.cameras, windows, val_ratio=0.0)
    obs = data.batch("train", torch.tensor([10]))["obs"]
    out = trained.policy.predict_action(obs)
    buffer = ReplayBuffer.open(demo_store)
    runner = PolicyRunner(trained, n_envs=1)
    runner.reset([0])
    history = [{k: buffer[k][s] for k in ("front", "wrist", "state")} for s in (9, 10)]
    chunk = runner.predict([history], [0])[0]
    np.testing.assert_allclose(chunk, out[0, 1:5].numpy(), atol=2e-3)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_cache_and_autocast_training_on_cpu(
    demo_store, tmp_path, run_config, monkeypatch, dtype
):
    """``train.dtype`` bfloat16/float16 on a CPU: the features are computed under autocast to
    that dtype (a cache of its own, stored as float16), the loss is computed under autocast,
    stays finite and falls, and the checkpoint records the dtype the live encoder must use."""
    autocast_dtypes = []
    compute_loss = MLPPolicy.compute_loss

    def recording(self, batch, generator=None):
        enabled = torch.is_autocast_enabled("cpu")
        autocast_dtypes.append(torch.get_autocast_dtype("cpu") if enabled else None)
        return compute_loss(self, batch, generator)

    monkeypatch.setattr(MLPPolicy, "compute_loss", recording)
    cfg = run_config(
        demo_store, tmp_path, small_mlp(), dtype=dtype, steps=40, lr=3e-3, val_ratio=0.0
    )
    result = fit(cfg)
    curve = losses(tmp_path)
    assert np.isfinite(curve).all() and curve[-1] < 0.5 * curve[0], curve
    assert set(autocast_dtypes) == {getattr(torch, dtype)} and len(autocast_dtypes) == 40

    info = read_info(result.checkpoint)
    assert info["encoder"]["dtype"] == dtype and info["config"]["train"]["dtype"] == dtype
    assert info["cache_fingerprint"] == result.cache.fingerprint
    assert result.cache.attrs["dtype"] == dtype
    assert PolicyRunner(load(result.checkpoint)).live.dtype == dtype
    full = cache.build_cache(demo_store, build_encoder(cfg.encoder), chunk_steps=64)
    assert full.fingerprint != result.cache.fingerprint
    low, ref = result.cache.features("front")[:], full.features("front")[:]
    assert low.dtype == np.float16 and not np.array_equal(low, ref)  # computed in low precision
    np.testing.assert_allclose(low.astype(np.float32), ref.astype(np.float32), atol=0.05)


def test_nan_actions_in_a_store_are_refused(demo_store, tmp_path, run_config):
    bad = tmp_path / "bad.zarr"
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
    cfg.train.overwrite = True  # the same run directory again, on purpose
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


def pythonpath():
    """``PYTHONPATH`` for a script outside the repository (``envs`` is imported from its root)."""
    return os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))


#: Runs ``train_policy.py``'s entry point with every training batch's window rows recorded per
#: rank (``<record><rank>.pt``, ``(steps, batch_size)``).
DDP_DRIVER = """
import os
import sys

import torch

from s2policy.cli import train_main
from s2policy.training.dataset import CachedFeatureData

record, *overrides = sys.argv[1:]
drawn, batch = [], CachedFeatureData.batch


def recording_batch(self, split, rows, views=None):
    if split == "train":
        drawn.append(rows.clone())
    return batch(self, split, rows, views)


CachedFeatureData.batch = recording_batch
train_main(overrides)
torch.save(torch.stack(drawn), f"{record}{os.environ.get('RANK', '0')}.pt")
"""


@pytest.mark.slow
def test_torchrun_ddp_trains(demo_store, tmp_path, run_config, torchrun):
    """Two DDP ranks with batch B each train exactly like one process on their 2B windows: the
    ranks draw different windows, and rank 0's checkpoint after N steps equals one process
    trained on the two ranks' batches concatenated (gradients averaged over the ranks)."""
    driver = tmp_path / "driver.py"
    driver.write_text(DDP_DRIVER)
    args = [
        f"dataset={demo_store}",
        "task.env.image_size=[32,32]",
        "task.env.shadow_size=0",
        "encoder=nano_s2",
        "train.steps=20",
        "train.device=cpu",
        "train.log_every=10",
        "train.lr=3e-3",
        "train.warmup_steps=0",
        "policy.hidden_dims=[32]",
        "policy.horizon=8",
        "policy.n_action_steps=4",
    ]
    ddp = tmp_path / "ddp"
    cmd = [str(driver), str(tmp_path / "rows"), f"hydra.run.dir={ddp}", *args]
    code, _, err = torchrun([*cmd, "train.batch_size=16"], PYTHONPATH=pythonpath())
    assert code == 0, err[-3000:]
    assert read_info(ddp)["step"] == 20
    assert load(ddp).policy.cfg.hidden_dims == [32]
    rows = [torch.load(tmp_path / f"rows{rank}.pt") for rank in (0, 1)]
    assert rows[0].shape == rows[1].shape == (20, 16)
    assert (rows[0] != rows[1]).float().mean() > 0.5  # each rank draws its own windows

    def replay(name, batches, batch_size):
        """One process, this run's config with ``batch_size``, trained on ``batches``."""
        queued = iter(batches)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(
                CachedFeatureData, "sample", lambda self, n, g: self.batch("train", next(queued))
            )
            cli.train_main(
                [f"hydra.run.dir={tmp_path / name}", *args, f"train.batch_size={batch_size}"]
            )
        return load_file(str(tmp_path / name / "checkpoint" / "model.safetensors"))

    weights = load_file(str(ddp / "checkpoint" / "model.safetensors"))
    combined = replay("combined", torch.cat(rows, dim=1), 32)
    for key in weights:
        torch.testing.assert_close(weights[key], combined[key], rtol=1e-4, atol=1e-4, msg=key)
    # the tolerance tells gradient averaging apart: rank 0's batches alone train other weights
    alone = replay("alone", rows[0], 16)
    far = max((weights[k] - alone[k]).abs().max() for k in weights)
    assert far > 5e-3, far
