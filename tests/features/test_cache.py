import ast
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from s2policy.data.store import ReplayBuffer
from s2policy.encoders.preprocess import frames_to_tensor
from s2policy.encoders.s2 import EncoderConfig, build_encoder
from s2policy.features import cache
from s2policy.features.cache import CacheError

ROOT = Path(__file__).resolve().parents[2]


def make_store(path, n_episodes=4, T=10, size=32, seed=0):
    rng = np.random.default_rng(seed)
    buf = ReplayBuffer.create(path, attrs={"cameras": ["front", "wrist"]})
    for _ in range(n_episodes):
        buf.add_episode(
            {
                "front": rng.integers(0, 256, (T, size, size, 3), dtype=np.uint8),
                "wrist": rng.integers(0, 256, (T, size, size, 3), dtype=np.uint8),
                "state": rng.normal(size=(T, 5)).astype(np.float32),
                "action": rng.uniform(-1, 1, (T, 5)).astype(np.float32),
            }
        )
    return buf


def nano(**kw):
    return build_encoder(EncoderConfig(backbone="vit_nano", scales=(32, 64), **kw))


@pytest.fixture
def store(tmp_path):
    return make_store(tmp_path / "demo.zarr").path


def test_cached_features_equal_the_live_encoder(store):
    enc = nano()
    info = cache.build_cache(store, enc, chunk_steps=16, batch_size=8)
    assert info.complete and info.attrs["cameras"] == ["front", "wrist"]
    buf = ReplayBuffer.open(store)
    for cam in ("front", "wrist"):
        feats = info.features(cam)
        assert feats.dtype == np.float16 and feats.shape == (40, 96)
        with torch.no_grad():
            live = enc(frames_to_tensor(buf[cam][:])).numpy()
        np.testing.assert_allclose(feats[:].astype(np.float32), live, atol=5e-3, rtol=2e-3)
    assert cache.open_cache(store, enc).fingerprint == info.fingerprint


def test_token_features_are_cached_with_their_shape(store):
    info = cache.build_cache(store, nano(pool="tokens"), cameras=["wrist"], chunk_steps=16)
    assert info.attrs["feature_shape"] == [17, 96] and info.features("wrist").shape == (40, 17, 96)


def test_fingerprint_changes_with_each_input_and_only_then(tmp_path, store):
    buf = ReplayBuffer.open(store)
    ident = cache.dataset_identity(buf, ["front", "wrist"])
    spec = nano().spec()
    fp = cache.fingerprint(ident, spec, "float32")
    assert (
        cache.fingerprint(cache.dataset_identity(buf, ["front", "wrist"]), nano().spec(), "float32")
        == fp
    )
    others = {
        "scales": cache.fingerprint(
            ident,
            build_encoder(EncoderConfig(backbone="vit_nano", scales=(32, 64, 96))).spec(),
            "float32",
        ),
        "weights": cache.fingerprint(ident, nano(init_seed=1).spec(), "float32"),
        "dtype": cache.fingerprint(ident, spec, "bfloat16"),
        "dataset": cache.fingerprint(
            cache.dataset_identity(make_store(tmp_path / "other.zarr", seed=1), ["front", "wrist"]),
            spec,
            "float32",
        ),
    }
    assert len(set(others.values()) | {fp}) == 5, others
    ReplayBuffer.open(store, "a").add_episode(buf.get_episode(0))  # more data -> new identity
    assert cache.dataset_identity(ReplayBuffer.open(store), ["front", "wrist"]) != ident


def test_mismatched_cache_is_refused_with_what_differs(store):
    cache.build_cache(store, nano(), chunk_steps=16)
    with pytest.raises(
        CacheError,
        match=r"no feature cache.*scales=\[32\].*existing caches: "
        r"\w+: vit_nano scales=\[32, 64\]",
    ):
        cache.open_cache(store, build_encoder(EncoderConfig(backbone="vit_nano", scales=(32,))))
    buf = ReplayBuffer.open(store, "a")
    buf.add_episode(buf.get_episode(1))
    with pytest.raises(CacheError, match="stale: the dataset changed since"):
        cache.open_cache(store, nano())


def test_incomplete_cache_is_refused_then_resumed(store, monkeypatch):
    enc = nano()
    reference = cache.build_cache(store, enc, chunk_steps=8)
    ref = {c: reference.features(c)[:] for c in ("front", "wrist")}
    group = zarr.open_group(str(store), mode="r+")[f"features/{reference.fingerprint}"]
    group.attrs["complete"] = False
    group["done/wrist"][2:] = 0  # as if killed after the first two wrist chunks
    group["wrist"][16:] = 0
    with pytest.raises(CacheError, match=r"incomplete \(7/10 chunks\); rerun the build to resume"):
        cache.open_cache(store, enc)
    encoded = []
    real = cache.encode_frames
    monkeypatch.setattr(
        cache, "encode_frames", lambda e, f, *a: encoded.append(len(f)) or real(e, f, *a)
    )
    info = cache.build_cache(store, enc, chunk_steps=8)
    assert encoded == [8, 8, 8] and info.complete
    for cam in ref:
        np.testing.assert_array_equal(info.features(cam)[:], ref[cam])


def test_verify_detects_corruption(store):
    enc = nano()
    info = cache.build_cache(store, enc, chunk_steps=16)
    assert cache.verify_cache(store, enc, n_samples=8) < 5e-3
    # (not 0: zarr deletes a chunk file written as the fill value, and a missing chunk is
    # reported as such, see test_cache_integrity.py)
    zarr.open_group(str(store), mode="r+")[f"features/{info.fingerprint}/front"][:] = 1
    with pytest.raises(CacheError, match="differs from the live encoder"):
        cache.verify_cache(store, enc, n_samples=40)


def test_list_and_remove(store):
    a = cache.build_cache(store, nano(), chunk_steps=16)
    b = cache.build_cache(store, nano(pool="mean"), chunk_steps=16)
    assert {c.fingerprint for c in cache.list_caches(store)} == {a.fingerprint, b.fingerprint}
    cache.remove_cache(store, a.fingerprint)
    assert [c.fingerprint for c in cache.list_caches(store)] == [b.fingerprint]
    with pytest.raises(CacheError, match="no cache 'nope'"):
        cache.remove_cache(store, "nope")
    assert ReplayBuffer.open(store).n_episodes == 4  # demonstrations untouched


def test_missing_camera_and_empty_store(tmp_path, store):
    with pytest.raises(CacheError, match=r"no camera \['top'\]"):
        cache.build_cache(store, nano(), cameras=["top"])
    ReplayBuffer.create(tmp_path / "empty.zarr")
    with pytest.raises(CacheError, match="no episodes"):
        cache.build_cache(tmp_path / "empty.zarr", nano())
    with pytest.raises(ValueError, match="dtype must be"):
        cache.build_cache(store, nano(), dtype="float8")


def cache_cmd(store, *extra, launcher=(sys.executable,)):
    return [
        *launcher,
        str(ROOT / "cache_features.py"),
        f"dataset={store}",
        "encoder=nano_s2",
        "chunk_steps=8",
        "batch_size=8",
        "device=cpu",
        f"hydra.run.dir={store}_log",
        *extra,
    ]


@pytest.mark.slow
def test_killed_build_resumes_to_identical_arrays(tmp_path):
    store = make_store(tmp_path / "big.zarr", n_episodes=20, T=20, size=64).path
    clean = tmp_path / "clean.zarr"
    shutil.copytree(store, clean)
    subprocess.run(cache_cmd(clean), check=True, capture_output=True, cwd=ROOT)
    fp = cache.list_caches(clean)[0].fingerprint
    proc = subprocess.Popen(
        cache_cmd(store), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    done_file = store / "features" / fp / "done" / "front"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if done_file.exists() and zarr.open_array(str(done_file), mode="r")[:].sum() >= 3:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = cache.list_caches(store)[0]
    assert partial.fingerprint == fp and not partial.complete, "killed after it finished"
    subprocess.run(cache_cmd(store), check=True, capture_output=True, cwd=ROOT)
    resumed = cache.list_caches(store)[0]
    assert resumed.complete
    for cam in ("front", "wrist"):
        np.testing.assert_array_equal(
            resumed.features(cam)[:], cache.list_caches(clean)[0].features(cam)[:]
        )


@pytest.mark.slow
def test_torchrun_ranks_share_the_build(tmp_path, torchrun):
    store = make_store(tmp_path / "dist.zarr", n_episodes=6, T=10).path
    code, out, err = torchrun(cache_cmd(store, launcher=()), timeout=180)
    assert code == 0, err[-3000:]
    info = cache.open_cache(store, nano())
    enc = nano()
    buf = ReplayBuffer.open(store)
    with torch.no_grad():
        live = enc(frames_to_tensor(buf["front"][:])).numpy()
    np.testing.assert_allclose(
        info.features("front")[:].astype(np.float32), live, atol=5e-3, rtol=2e-3
    )
    flags = zarr.open_group(str(store))[f"features/{info.fingerprint}/done/front"][:]
    assert flags.all() and len(flags) == 8
    # all of the above holds when one rank builds everything: each rank logs the chunks it
    # wrote, and rank r must have written chunks i % 2 == r of every camera
    shares = re.findall(r"rank (\d) of 2 wrote chunks (\{.*\})", out + err)
    assert sorted(rank for rank, _ in shares) == ["0", "1"], out + err
    for rank, chunks in shares:
        expected = list(range(int(rank), 8, 2))
        assert ast.literal_eval(chunks) == {"front": expected, "wrist": expected}, rank


def test_cli_list_and_config_typo(tmp_path, store):
    proc = subprocess.run(cache_cmd(store, "action=list"), capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and "no feature caches" in proc.stdout
    proc = subprocess.run(
        cache_cmd(store, "encoder.scaless=[32]"), capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode != 0 and "scaless" in proc.stderr
