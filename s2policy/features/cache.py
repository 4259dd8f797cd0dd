"""Frozen-encoder features cached inside a ReplayBuffer store, keyed by a fingerprint.

Layout, beside the demonstrations::

    <store>.zarr/features/<fp>/            attrs: spec, weights digest, dtype, dataset identity,
                                            cameras, n_steps, chunk_steps, complete
    <store>.zarr/features/<fp>/<camera>    float16 (n_steps, *feature_shape), chunked in time
    <store>.zarr/features/<fp>/done/<cam>  uint8 (n_chunks,), one file per chunk: 1 = written

``fp = sha256(dataset identity, encoder spec, weights digest, compute dtype)``. Features are
written one time-chunk at a time (each a single, atomically written chunk file), then that chunk's
done flag; ``complete`` is set last. A rerun skips chunks already done, so a killed build resumes
where it stopped. Under ``torchrun`` rank ``r`` of ``w`` takes chunks ``i`` with ``i % w == r``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from s2policy.data.replay_buffer import ReplayBuffer
from s2policy.encoders.preprocess import frames_to_tensor
from s2policy.encoders.s2 import S2Encoder
from s2policy.runtime import DTYPES

logger = logging.getLogger(__name__)

FEATURES = "features"


class CacheError(ValueError):
    """A cache that is missing, incomplete, or built by another encoder or dataset."""


def dataset_identity(buffer: ReplayBuffer, cameras: list[str], n_sample: int = 16) -> str:
    """Digest of what the features are computed from: episode boundaries, camera array shapes,
    and the bytes of ``n_sample`` evenly spaced frames per camera (cheap, and it changes when
    episodes are added, removed or re-collected)."""
    h = hashlib.sha256()
    h.update(buffer.episode_ends.tobytes())
    for cam in sorted(cameras):
        frames = buffer[cam]
        h.update(f"{cam}:{frames.shape}:{frames.dtype};".encode())
        idx = np.unique(np.linspace(0, len(frames) - 1, min(n_sample, len(frames))).astype(int))
        h.update(np.ascontiguousarray(frames[idx]).tobytes())
    return h.hexdigest()


def fingerprint(identity: str, spec: dict[str, Any], dtype: str) -> str:
    """Cache key of (dataset identity, encoder spec incl. weights digest, compute dtype)."""
    payload = {
        "dataset": identity,
        "spec": spec,
        "weights_digest": spec["backbone"]["weights_digest"],
        "dtype": dtype,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def resolve_cameras(buffer: ReplayBuffer, cameras: list[str] | None) -> list[str]:
    available = list(
        buffer.attrs.get("cameras") or [k for k in buffer.keys() if _is_image(buffer, k)]
    )
    cameras = list(cameras or available)
    missing = [c for c in cameras if c not in buffer.keys()]
    if missing or not cameras:
        raise CacheError(
            f"{buffer.path} has no camera {missing or cameras}; cameras in the store: {available}"
        )
    return cameras


def _is_image(buffer: ReplayBuffer, key: str) -> bool:
    arr = buffer[key]
    return arr.dtype == np.uint8 and len(arr.shape) == 4 and arr.shape[-1] == 3


@dataclass
class CacheInfo:
    fingerprint: str
    path: Path
    attrs: dict[str, Any]

    @property
    def complete(self) -> bool:
        return bool(self.attrs.get("complete"))

    def features(self, camera: str) -> zarr.Array:
        return zarr.open_group(str(self.path), mode="r")[f"{FEATURES}/{self.fingerprint}/{camera}"]


def list_caches(store: str | Path) -> list[CacheInfo]:
    """Every cache in ``store`` (complete or not)."""
    root = zarr.open_group(str(store), mode="r")
    if FEATURES not in root:
        return []
    group = root[FEATURES]
    return [
        CacheInfo(fp, Path(store), group[fp].attrs.asdict()) for fp in sorted(group.group_keys())
    ]


def describe_spec(spec: dict[str, Any]) -> str:
    b = spec["backbone"]
    return (
        f"{b['name']} scales={spec['scales']} pool={spec['pool']} weights={b['weights']} "
        f"antialias={spec['antialias']} grid={spec['output_grid']}"
    )


def cache_fingerprint(
    store: str | Path, encoder: S2Encoder, cameras: list[str] | None = None, dtype: str = "float32"
) -> str:
    """The fingerprint of ``encoder``'s cache on ``store``'s current frames."""
    buffer = ReplayBuffer.open(store)
    cameras = resolve_cameras(buffer, cameras)
    return fingerprint(dataset_identity(buffer, cameras), encoder.spec(), dtype)


def open_cache(
    store: str | Path, encoder: S2Encoder, cameras: list[str] | None = None, dtype: str = "float32"
) -> CacheInfo:
    """The complete cache of ``encoder`` on ``store``'s current frames, or a :class:`CacheError`
    saying what is missing, incomplete, or different."""
    buffer = ReplayBuffer.open(store)
    cameras = resolve_cameras(buffer, cameras)
    spec = encoder.spec()
    fp = fingerprint(dataset_identity(buffer, cameras), spec, dtype)
    caches = {c.fingerprint: c for c in list_caches(store)}
    if fp not in caches:
        others = "; ".join(
            f"{c.fingerprint}: {describe_spec(c.attrs['spec'])} dtype={c.attrs['dtype']}"
            + (
                ""
                if c.attrs.get("dataset_identity") == dataset_identity(buffer, c.attrs["cameras"])
                else " (stale: the dataset changed since)"
            )
            for c in caches.values()
        )
        raise CacheError(
            f"no feature cache in {store} for encoder {describe_spec(spec)} dtype={dtype} "
            f"(fingerprint {fp}); existing caches: {others or 'none'}. Build it with "
            "python cache_features.py dataset=... encoder=..."
        )
    info = caches[fp]
    if not info.complete:
        done, total = _progress(info)
        raise CacheError(
            f"feature cache {fp} in {store} is incomplete ({done}/{total} chunks); rerun the "
            "build to resume it"
        )
    absent = [c for c in cameras if c not in info.attrs["cameras"]]
    if absent:
        raise CacheError(
            f"feature cache {fp} has no camera {absent}; it has {info.attrs['cameras']}"
        )
    return info


def build_cache(
    store: str | Path,
    encoder: S2Encoder,
    cameras: list[str] | None = None,
    batch_size: int = 64,
    chunk_steps: int = 256,
    dtype: str = "float32",
    on_chunk: Callable[[int, int], None] | None = None,
) -> CacheInfo:
    """Compute (or finish) the features of ``encoder`` for ``store`` and return the cache.

    ``on_chunk(done, total)`` is called after each chunk this process writes. The encoder's
    device is used; ``dtype`` ``bfloat16``/``float16`` runs it under autocast (GPU path).
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    if batch_size < 1 or chunk_steps < 1:
        raise ValueError("batch_size and chunk_steps must be >= 1")
    rank, world = _dist_rank_world()
    buffer = ReplayBuffer.open(store)
    if buffer.n_steps == 0:
        raise CacheError(f"{store} holds no episodes to encode")
    cameras = resolve_cameras(buffer, cameras)
    identity = dataset_identity(buffer, cameras)
    spec = encoder.spec()
    fp = fingerprint(identity, spec, dtype)
    if rank == 0:
        _create_group(buffer, fp, cameras, encoder, identity, spec, dtype, chunk_steps)
    _barrier(world)
    group = zarr.open_group(str(store), mode="r+")[f"{FEATURES}/{fp}"]
    if group.attrs.get("complete"):
        return CacheInfo(fp, Path(store), group.attrs.asdict())
    chunk_steps = int(group.attrs["chunk_steps"])
    n_chunks = -(-buffer.n_steps // chunk_steps)
    todo = [
        (cam, i)
        for cam in cameras
        for i in np.flatnonzero(group[f"done/{cam}"][:] == 0).tolist()
        if i % world == rank
    ]
    total, done_before = n_chunks * len(cameras), n_chunks * len(cameras) - len(todo) * world
    if todo and len(todo) * world < total:
        logger.info("resuming cache %s: %d chunks left for this process", fp, len(todo))
    device = next(encoder.parameters()).device
    for n, (cam, i, frames) in enumerate(_prefetch(buffer, todo, chunk_steps)):
        feats = encode_frames(encoder, frames, batch_size, dtype, device)
        start = i * chunk_steps
        group[cam][start : start + len(feats)] = stored(feats)
        group[f"done/{cam}"][i] = 1
        if on_chunk is not None:
            on_chunk(min(total, done_before + (n + 1) * world), total)
    _barrier(world)
    if rank == 0:
        if all((group[f"done/{c}"][:] == 1).all() for c in cameras):
            group.attrs["complete"] = True
    _barrier(world)
    return CacheInfo(
        fp, Path(store), zarr.open_group(str(store))[f"{FEATURES}/{fp}"].attrs.asdict()
    )


def stored(features: np.ndarray) -> np.ndarray:
    """Features as the cache stores them (float16); live evaluation rounds the same way."""
    return features.astype(np.float16)


@torch.inference_mode()
def encode_frames(
    encoder: S2Encoder, frames: np.ndarray, batch_size: int, dtype: str, device: torch.device
) -> np.ndarray:
    """uint8 frames ``(T, H, W, 3)`` -> float32 features ``(T, *encoder.output_shape)``."""
    outs = []
    autocast = dtype != "float32"
    for start in range(0, len(frames), batch_size):
        images = frames_to_tensor(frames[start : start + batch_size], device, device.type == "cuda")
        with torch.autocast(device.type, dtype=DTYPES[dtype], enabled=autocast):
            outs.append(encoder(images).float().cpu().numpy())
    return np.concatenate(outs)


def verify_cache(
    store: str | Path,
    encoder: S2Encoder,
    cameras: list[str] | None = None,
    dtype: str = "float32",
    n_samples: int = 16,
    seed: int = 0,
    atol: float = 2e-2,
    rtol: float = 1e-2,
) -> float:
    """Recompute ``n_samples`` random frames per camera and compare with the cache; returns the
    largest absolute difference, raises :class:`CacheError` beyond ``atol + rtol * |value|``
    (float16 storage rounds to ~1e-3 relative)."""
    info = open_cache(store, encoder, cameras, dtype)
    buffer = ReplayBuffer.open(store)
    rng = np.random.default_rng(seed)
    device = next(encoder.parameters()).device
    worst = 0.0
    for cam in cameras or info.attrs["cameras"]:
        idx = np.sort(
            rng.choice(buffer.n_steps, size=min(n_samples, buffer.n_steps), replace=False)
        )
        live = encode_frames(encoder, buffer[cam][idx], len(idx), dtype, device)
        cached = info.features(cam).oindex[idx].astype(np.float32)
        diff = np.abs(live - cached)
        worst = max(worst, float(diff.max()))
        if not np.all(diff <= atol + rtol * np.abs(live)):
            raise CacheError(
                f"cache {info.fingerprint} camera {cam!r} differs from the live encoder by up to "
                f"{diff.max():.3g} (tolerance {atol} + {rtol} x |value|); remove and rebuild it"
            )
    return worst


def remove_cache(store: str | Path, fp: str) -> None:
    root = zarr.open_group(str(store), mode="r+")
    if FEATURES not in root or fp not in root[FEATURES]:
        known = [c.fingerprint for c in list_caches(store)]
        raise CacheError(f"no cache {fp!r} in {store}; caches: {known or 'none'}")
    del root[FEATURES][fp]


# ---------------------------------------------------------------------------- internals
def _create_group(buffer, fp, cameras, encoder, identity, spec, dtype, chunk_steps) -> None:
    root = zarr.open_group(str(buffer.path), mode="r+")
    features = root.require_group(FEATURES)
    if fp in features:
        attrs = features[fp].attrs.asdict()
        if attrs.get("n_steps") != buffer.n_steps or attrs.get("cameras") != cameras:
            raise CacheError(f"cache {fp} was started with other cameras or steps; remove it")
        return
    group = features.create_group(fp)
    height, width = buffer[cameras[0]].shape[1:3]
    shape = encoder.output_shape(height, width)
    n_chunks = -(-buffer.n_steps // chunk_steps)
    for cam in cameras:
        if buffer[cam].shape[1:3] != (height, width):
            raise CacheError(f"cameras {cameras} have different image sizes; cache them apart")
        group.create_array(
            cam,
            shape=(buffer.n_steps, *shape),
            chunks=(chunk_steps, *shape),
            dtype="float16",
            compressors=zarr.codecs.BloscCodec(cname="zstd", clevel=1, shuffle="shuffle"),
        )
        group.require_group("done").create_array(cam, shape=(n_chunks,), chunks=(1,), dtype="uint8")
    group.attrs.update(
        {
            "fingerprint": fp,
            "spec": spec,
            "weights_digest": spec["backbone"]["weights_digest"],
            "dtype": dtype,
            "storage_dtype": "float16",
            "dataset_identity": identity,
            "cameras": cameras,
            "n_steps": buffer.n_steps,
            "feature_shape": list(shape),
            "chunk_steps": chunk_steps,
            "complete": False,
        }
    )


def _prefetch(
    buffer: ReplayBuffer, todo: list[tuple[str, int]], chunk_steps: int, depth: int = 2
) -> Iterator[tuple[str, int, np.ndarray]]:
    """Yield ``(camera, chunk, frames)`` while a thread reads (decompresses) the next chunks."""

    def read(item):
        cam, i = item
        return cam, i, buffer[cam][i * chunk_steps : (i + 1) * chunk_steps]

    with ThreadPoolExecutor(max_workers=depth) as pool:
        futures = [pool.submit(read, item) for item in todo[:depth]]
        for k in range(len(todo)):
            result = futures[k].result()
            if k + depth < len(todo):
                futures.append(pool.submit(read, todo[k + depth]))
            yield result


def _progress(info: CacheInfo) -> tuple[int, int]:
    group = zarr.open_group(str(info.path), mode="r")[f"{FEATURES}/{info.fingerprint}"]
    flags = [group[f"done/{c}"][:] for c in info.attrs["cameras"]]
    return int(sum(f.sum() for f in flags)), int(sum(f.size for f in flags))


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()
