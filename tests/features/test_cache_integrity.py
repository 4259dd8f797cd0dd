"""Feature caches after a kill or a damaged chunk file: resumed, recreated or refused with one
sentence, never read as zeros; kills at named points resume to bit-identical features."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
import zarr.core.attributes

from s2policy.data.store import ReplayBuffer
from s2policy.encoders.s2 import EncoderConfig, build_encoder
from s2policy.features import cache
from s2policy.features.cache import CacheError
from s2policy.features.command import CacheCommandConfig, run_cache_command
from s2policy.training.dataset import CachedFeatureData, WindowSpec

ROOT = Path(__file__).resolve().parents[2]
CAMS = ("front", "wrist")


def make_store(path, n_episodes=4, T=10, size=32, seed=0):
    rng = np.random.default_rng(seed)
    buf = ReplayBuffer.create(path, attrs={"cameras": list(CAMS)})
    for _ in range(n_episodes):
        buf.add_episode(
            {
                **{c: rng.integers(0, 256, (T, size, size, 3), dtype=np.uint8) for c in CAMS},
                "state": rng.normal(size=(T, 5)).astype(np.float32),
                "action": rng.uniform(-1, 1, (T, 5)).astype(np.float32),
            }
        )
    return buf.path


def nano(**kw):
    return build_encoder(EncoderConfig(backbone="vit_nano", scales=(32, 64), **kw))


@pytest.fixture
def store(tmp_path):
    return make_store(tmp_path / "demo.zarr")


class Killed(BaseException):
    """Stands in for SIGKILL inside the test process."""


def kill_before_attrs(monkeypatch):
    """The next group attribute write dies before it happens (as a kill inside the cache's
    creation, between its arrays and its attributes)."""

    def die(self, *a, **kw):
        raise Killed

    monkeypatch.setattr(zarr.core.attributes.Attributes, "update", die)


def features(info):
    return {c: info.features(c)[:] for c in info.attrs["cameras"]}


def chunk_file(store, fp, cam, i):
    return Path(store) / "features" / fp / cam / "c" / str(i) / "0"


def counting_encoder(monkeypatch):
    encoded = []
    real = cache.encode_frames
    monkeypatch.setattr(
        cache, "encode_frames", lambda e, f, *a: encoded.append(len(f)) or real(e, f, *a)
    )
    return encoded


# ------------------------------------------------------------------ kill during creation
def test_half_created_cache_is_listed_refused_clearly_and_recreated(tmp_path, store, monkeypatch):
    reference = make_store(tmp_path / "ref.zarr")
    ref = features(cache.build_cache(reference, nano(), chunk_steps=16))
    enc = nano()
    fp = cache.cache_fingerprint(store, enc)
    with monkeypatch.context() as m:
        kill_before_attrs(m)
        with pytest.raises(Killed):
            cache.build_cache(store, enc, chunk_steps=16)
    assert (Path(store) / "features" / fp / "front" / "zarr.json").exists()

    rows = run_cache_command(CacheCommandConfig(action="list", dataset=str(store)))
    assert len(rows) == 1 and rows[0].startswith(f"{fp}  INCOMPLETE")
    assert rows[0].endswith(
        "creation was interrupted before any chunk was computed (the next build recreates it)"
    )
    with pytest.raises(CacheError, match=rf"{fp} in .* was interrupted while being created"):
        cache.open_cache(store, enc)
    with pytest.raises(
        CacheError, match=rf"existing caches: {fp}: creation was interrupted before any chunk"
    ):
        cache.open_cache(store, nano(pool="mean"))

    info = cache.build_cache(store, enc, chunk_steps=16)
    assert info.fingerprint == fp and info.complete
    for cam, values in features(info).items():
        np.testing.assert_array_equal(values, ref[cam])


def test_half_created_cache_with_computed_chunks_is_never_deleted(store):
    enc = nano()
    info = cache.build_cache(store, enc, chunk_steps=16)
    before = features(info)
    meta = Path(store) / "features" / info.fingerprint / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"] = {}  # attributes lost, three chunks per camera computed
    meta.write_text(json.dumps(doc))
    with pytest.raises(
        CacheError,
        match=rf"feature cache {info.fingerprint} in .* has 6 computed chunks but no "
        r"attributes.*action=remove .*fingerprint=" + info.fingerprint,
    ):
        cache.build_cache(store, enc, chunk_steps=16)
    for cam in CAMS:  # nothing was deleted
        assert (Path(store) / "features" / info.fingerprint / cam / "c" / "2" / "0").exists()
        arr = zarr.open_group(str(store), mode="r")[f"features/{info.fingerprint}/{cam}"]
        np.testing.assert_array_equal(arr[:], before[cam])


# ------------------------------------------------------------------ damaged chunk files
def test_missing_chunk_file_is_an_error_not_zeros_and_the_build_recomputes_it(store, monkeypatch):
    enc = nano()
    info = cache.build_cache(store, enc, chunk_steps=16)
    before = features(info)
    chunk_file(store, info.fingerprint, "front", 1).unlink()
    sentence = (
        rf"^feature cache {info.fingerprint} in {re.escape(str(store))}: camera 'front' steps "
        r"16-31 have no chunk file although marked done; run python cache_features.py "
        r"action=verify dataset=.* to mark the damaged chunks for recomputation, then rerun the "
        r"build$"
    )
    with pytest.raises(CacheError, match=sentence):
        info.features("front")[:]
    np.testing.assert_array_equal(info.features("wrist")[:], before["wrist"])
    with pytest.raises(CacheError, match=sentence):  # the training data path
        CachedFeatureData(str(store), info, ["front"], WindowSpec(2, 4, 2))

    encoded = counting_encoder(monkeypatch)
    rebuilt = cache.build_cache(store, enc, chunk_steps=16)
    assert encoded == [16] and rebuilt.complete  # just the lost chunk
    for cam, values in features(rebuilt).items():
        np.testing.assert_array_equal(values, before[cam])


def test_truncated_chunk_names_cache_camera_and_steps_and_verify_marks_it(store, monkeypatch):
    enc = nano()
    info = cache.build_cache(store, enc, chunk_steps=16)
    before = features(info)
    path = chunk_file(store, info.fingerprint, "wrist", 2)
    path.write_bytes(path.read_bytes()[:20])
    sentence = (
        rf"^feature cache {info.fingerprint} in .*: camera 'wrist' steps 32-39 do not decode "
        r"\(chunk file truncated or corrupt\); run python cache_features.py action=verify "
        r"dataset=.* then rerun the build$"
    )
    wrist = info.features("wrist")
    for read in (lambda: wrist[:], lambda: wrist.oindex[[0, 35]], lambda: wrist[33]):
        with pytest.raises(CacheError, match=sentence):
            read()
    np.testing.assert_array_equal(wrist[:32], before["wrist"][:32])  # other chunks still read
    with pytest.raises(CacheError, match=sentence):
        CachedFeatureData(str(store), info, list(CAMS), WindowSpec(2, 4, 2))

    with pytest.raises(
        CacheError,
        match=rf"feature cache {info.fingerprint} in .*: camera 'wrist' steps 32-39 \(chunk "
        r"file does not decode\); their done flags were cleared, so rerunning the build "
        r"recomputes just those chunks",
    ):
        cache.verify_cache(store, enc)
    with pytest.raises(CacheError, match=r"incomplete \(5/6 chunks\)"):
        cache.open_cache(store, enc)
    encoded = counting_encoder(monkeypatch)
    rebuilt = cache.build_cache(store, enc, chunk_steps=16)
    assert encoded == [8] and rebuilt.complete
    for cam, values in features(rebuilt).items():
        np.testing.assert_array_equal(values, before[cam])
    assert cache.verify_cache(store, enc, n_samples=8) < 5e-3


def test_verify_detects_missing_chunk_files(store):
    enc = nano()
    info = cache.build_cache(store, enc, chunk_steps=8)
    chunk_file(store, info.fingerprint, "front", 0).unlink()
    chunk_file(store, info.fingerprint, "front", 1).unlink()
    chunk_file(store, info.fingerprint, "front", 4).unlink()
    with pytest.raises(
        CacheError, match=r"camera 'front' steps 0-15, 32-39 \(chunk file missing\)"
    ):
        cache.verify_cache(store, enc, n_samples=1)
    flags = zarr.open_group(str(store), mode="r")[f"features/{info.fingerprint}/done/front"][:]
    assert flags.tolist() == [0, 0, 1, 1, 0]


# ------------------------------------------------------------------ kills at named points
BUILD = """
import sys, torch
torch.set_num_threads(1)
from s2policy.encoders.s2 import EncoderConfig, build_encoder
from s2policy.features.cache import build_cache
enc = build_encoder(EncoderConfig(backbone="vit_nano", scales=(32, 64)))
for store in sys.argv[1:]:
    build_cache(store, enc, chunk_steps=8, batch_size=8)
"""


def run_build(*stores, crash_at=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("S2POLICY_CRASH_AT", None)
    if crash_at:
        env["S2POLICY_CRASH_AT"] = crash_at
    return subprocess.run(
        [sys.executable, "-c", BUILD, *map(str, stores)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )


POINTS = ("cache.create", "cache.chunk", "cache.done")


@pytest.mark.slow
def test_kills_at_named_points_resume_to_bit_identical_features(tmp_path):
    clean = make_store(tmp_path / "clean.zarr", n_episodes=3, T=10)
    stores = {p: tmp_path / f"{p}.zarr" for p in POINTS}
    for point, path in stores.items():
        shutil.copytree(clean, path)
        proc = run_build(path, crash_at=point)
        assert proc.returncode == 137, (point, proc.stderr[-2000:])
        (partial,) = cache.list_caches(path)
        assert not partial.complete, point
    assert cache.list_caches(stores["cache.create"])[0].attrs == {}
    rows = run_cache_command(CacheCommandConfig(action="list", dataset=str(stores["cache.create"])))
    assert "INCOMPLETE" in rows[0]
    flags = cache.list_caches(stores["cache.done"])[0]
    assert cache.progress(flags) == (8, 8)  # every flag set, killed before `complete`

    proc = run_build(clean, *stores.values())
    assert proc.returncode == 0, proc.stderr[-3000:]
    (reference,) = cache.list_caches(clean)
    for point, path in stores.items():
        (resumed,) = cache.list_caches(path)
        assert resumed.complete and resumed.fingerprint == reference.fingerprint, point
        for cam in CAMS:
            got, want = resumed.features(cam)[:], reference.features(cam)[:]
            assert got.tobytes() == want.tobytes(), (point, cam)
