"""Augmented views in the feature cache: deterministic views, their own fingerprint, resumable
builds, one view drawn per training sample, the plain view for validation and live evaluation."""

import numpy as np
import pytest
import torch
import zarr

from s2policy.data.store import ReplayBuffer
from s2policy.features import cache
from s2policy.features.augment import AugmentConfig, augment_frames, split_view, view_name
from s2policy.features.cache import CacheError
from s2policy.training.dataset import CachedFeatureData, WindowSpec
from tests.features.test_cache import make_store, nano

AUG = AugmentConfig(views=2, shift_px=3)


@pytest.fixture
def store(tmp_path):
    return make_store(tmp_path / "demo.zarr").path


def smooth_frames(n=6, size=32, seed=0):
    """Frames with structure (a gradient plus a bright square), so a shift is visible."""
    rng = np.random.default_rng(seed)
    frames = np.zeros((n, size, size, 3), np.uint8)
    frames[:] = np.linspace(20, 200, size, dtype=np.uint8)[None, None, :, None]
    for t in range(n):
        y, x = rng.integers(4, size - 12, size=2)
        frames[t, y : y + 8, x : x + 8] = 250
    return frames


def test_views_are_deterministic_and_differ_between_views_and_steps():
    frames = smooth_frames()
    a = augment_frames(frames, AUG, view=0, steps=range(10, 16))
    np.testing.assert_array_equal(a, augment_frames(frames, AUG, view=0, steps=range(10, 16)))
    # a frame's view depends on (seed, view, step) alone, not on the chunk it is read in
    np.testing.assert_array_equal(a[2:3], augment_frames(frames[2:3], AUG, view=0, steps=[12]))
    assert a.shape == frames.shape and a.dtype == np.uint8
    assert not np.array_equal(a, frames)
    assert not np.array_equal(a, augment_frames(frames, AUG, view=1, steps=range(10, 16)))
    seeded = AugmentConfig(views=2, shift_px=3, seed=1)
    assert not np.array_equal(a, augment_frames(frames, seeded, view=0, steps=range(10, 16)))


def test_shift_alone_moves_the_image_by_at_most_shift_px():
    frames = smooth_frames(n=20)
    cfg = AugmentConfig(views=1, shift_px=2, brightness=0, contrast=0, hue=0)
    out = augment_frames(frames, cfg, view=0, steps=range(len(frames)))
    pad = np.pad(frames, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="edge")
    for t in range(len(frames)):  # each output is one crop of the padded frame
        crops = [
            np.array_equal(out[t], pad[t, dy : dy + 32, dx : dx + 32])
            for dy in range(5)
            for dx in range(5)
        ]
        assert any(crops)
    assert any(not np.array_equal(out[t], frames[t]) for t in range(len(frames)))


def test_bad_augment_configs_are_refused():
    for kw in ({"views": -1}, {"shift_px": -2}, {"brightness": 1.5}, {"hue": -0.1}, {"seed": -1}):
        with pytest.raises(ValueError, match="augment"):
            AugmentConfig(**kw)


def test_view_names():
    assert split_view(view_name("front", 3)) == ("front", 3)
    assert split_view("front") == ("front", None)
    assert split_view("cam@augx") == ("cam@augx", None)


def test_cache_with_views_has_its_own_fingerprint_and_the_views_features(store):
    enc = nano()
    plain = cache.build_cache(store, enc, chunk_steps=16)
    info = cache.build_cache(store, enc, chunk_steps=16, augment=AUG)
    assert info.fingerprint != plain.fingerprint and info.views == 2
    # views=0 is the plain cache: existing fingerprints are unchanged
    assert cache.cache_fingerprint(store, enc, augment=AugmentConfig()) == plain.fingerprint
    assert (
        cache.cache_fingerprint(store, enc, augment=AugmentConfig(views=2, shift_px=4))
        != info.fingerprint
    )
    buf = ReplayBuffer.open(store)
    for cam in ("front", "wrist"):
        np.testing.assert_array_equal(info.features(cam)[:], plain.features(cam)[:])
        for k in range(2):
            frames = augment_frames(buf[cam][:], AUG, k, range(buf.n_steps))
            cpu = torch.device("cpu")
            live = cache.stored(cache.encode_frames(enc, frames, 64, "float32", cpu))
            np.testing.assert_allclose(
                info.features(view_name(cam, k))[:].astype(np.float32), live, atol=5e-3
            )
    assert not np.array_equal(info.features("front@aug0")[:], info.features("front")[:])
    assert cache.open_cache(store, enc, augment=AUG).fingerprint == info.fingerprint
    with pytest.raises(CacheError, match=r"no feature cache.*augment=.*'views': 3"):
        cache.open_cache(store, enc, augment=AugmentConfig(views=3, shift_px=3))
    assert cache.verify_cache(store, enc, augment=AUG) < 2e-2
    assert "augment=" in cache.describe(info)


def test_a_killed_view_build_resumes_just_the_missing_chunks(store, monkeypatch):
    enc = nano()
    reference = cache.build_cache(store, enc, chunk_steps=8, augment=AUG)
    ref = {a: reference.features(a)[:] for a in reference.attrs["arrays"]}
    group = zarr.open_group(str(store), mode="r+")[f"features/{reference.fingerprint}"]
    group.attrs["complete"] = False
    group["done/wrist@aug1"][3:] = 0
    group["wrist@aug1"][24:] = 0
    with pytest.raises(CacheError, match=r"incomplete \(28/30 chunks\)"):
        cache.open_cache(store, enc, augment=AUG)
    encoded = []
    real = cache.encode_frames
    monkeypatch.setattr(
        cache, "encode_frames", lambda e, f, *a: encoded.append(len(f)) or real(e, f, *a)
    )
    info = cache.build_cache(store, enc, chunk_steps=8, augment=AUG)
    assert encoded == [8, 8] and info.complete
    for name, values in ref.items():
        np.testing.assert_array_equal(info.features(name)[:], values)


def test_a_lost_view_chunk_is_found_by_verify(store):
    enc = nano()
    info = cache.build_cache(store, enc, chunk_steps=8, augment=AUG)
    chunk = next((store / "features" / info.fingerprint / "front@aug0" / "c").rglob("*"))
    while chunk.is_dir():
        chunk = next(chunk.iterdir())
    chunk.unlink()
    with pytest.raises(CacheError, match=r"camera 'front@aug0' steps .*chunk file missing"):
        cache.verify_cache(store, enc, augment=AUG)


def test_training_draws_one_version_per_sample_and_validates_on_the_plain_view(store):
    enc = nano()
    info = cache.build_cache(store, enc, chunk_steps=16, augment=AUG)
    data = CachedFeatureData(str(store), info, ["front", "wrist"], WindowSpec(2, 4, 2))
    assert data.n_views == 2 and data.versions["front"].shape[:2] == (3, 40)
    versions = {
        k: torch.from_numpy(info.features(n)[:])
        for k, n in enumerate(["front", "front@aug0", "front@aug1"])
    }
    gen = torch.Generator().manual_seed(0)
    batch = data.sample(512, gen)
    feats = batch["obs"]["front"]  # (B, 2, D)
    seen = set()
    for b in range(len(feats)):
        match = [k for k, v in versions.items() if any(torch.equal(feats[b, 0], row) for row in v)]
        assert match, "a sample's features come from none of the versions"
        seen.update(match)
        # the sample's cameras and observation steps read the same version
        k = match[0]
        assert any(torch.equal(feats[b, 1], row) for row in versions[k])
    assert seen == {0, 1, 2}
    val = (
        next(data.iterate("val", 64))
        if data.n_windows("val")
        else data.batch("train", torch.arange(8))
    )
    plain = versions[0]
    for row in val["obs"]["front"][:, -1]:
        assert any(torch.equal(row, p) for p in plain)
    # the normalizer is fitted on the plain features
    assert torch.equal(data.arrays["front"], data.versions["front"][0])
