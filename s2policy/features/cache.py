"""Frozen-encoder features cached inside a ReplayBuffer store, keyed by a fingerprint.

Layout, beside the demonstrations::

    <store>.zarr/features/<fp>/            attrs: spec, weights digest, dtype, dataset identity,
                                            cameras, n_steps, chunk_steps, complete
    <store>.zarr/features/<fp>/<camera>    float16 (n_steps, *feature_shape), chunked in time
    <store>.zarr/features/<fp>/done/<cam>  uint8 (n_chunks,), one file per chunk: 1 = written
    <store>.zarr/features/<fp>/<cam>@aug<k> with ``augment.views`` > 0: the features of view ``k``
                                            of every frame (:mod:`s2policy.features.augment`)

``fp = sha256(dataset identity, encoder spec, weights digest, compute dtype[, augment spec])``.
Features are written one time-chunk at a time (each a single, atomically written chunk file), then
that chunk's done flag; ``complete`` is set last. A rerun skips chunks already done, so a killed
build resumes where it stopped. Under ``torchrun`` rank ``r`` of ``w`` takes chunks ``i`` with
``i % w == r``.

Crash safety and integrity: the group's attributes are written (in one file) after its arrays, so a
build killed while creating the cache leaves a group without attributes and without any done
chunk; the next build recreates it (a cache with a done chunk is never deleted without an explicit
``remove``). A chunk marked done whose chunk file is missing is recomputed by the next build and
refused by readers (:meth:`CacheInfo.features` lists the array's chunk files once per open); a
chunk file that does not decode fails the read with one sentence naming the cache, camera and
steps, and ``verify`` (:func:`verify_cache`) clears the done flags of every such chunk so the next
build recomputes just them. :func:`crash_point` kills the process at named points for tests.
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
from zarr.core.sync import sync

from s2policy.data.store import ChunkCheck, ReplayBuffer
from s2policy.encoders.preprocess import frames_to_tensor
from s2policy.encoders.s2 import S2Encoder
from s2policy.features.augment import AugmentConfig, augment_frames, split_view, view_arrays
from s2policy.fileio import crash_point, disk_full
from s2policy.runtime import DTYPES

logger = logging.getLogger(__name__)

FEATURES = "features"
#: Attributes a cache's group has once its creation finished (written together, after the arrays).
CREATED_ATTRS = ("spec", "dtype", "dataset_identity", "cameras", "n_steps", "chunk_steps")


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


def fingerprint(
    identity: str, spec: dict[str, Any], dtype: str, augment: AugmentConfig | None = None
) -> str:
    """Cache key of (dataset identity, encoder spec incl. weights digest, compute dtype, and the
    augmentation spec when the cache holds augmented views)."""
    payload = {
        "dataset": identity,
        "spec": spec,
        "weights_digest": spec["backbone"]["weights_digest"],
        "dtype": dtype,
    }
    if augment is not None and augment.enabled:
        payload["augment"] = augment.spec()
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


def _arrays(attrs: dict[str, Any]) -> list[str]:
    """Every feature array of a cache: its cameras, then their augmented views (if any)."""
    return list(attrs.get("arrays") or attrs["cameras"])


@dataclass
class CacheInfo:
    fingerprint: str
    path: Path
    attrs: dict[str, Any]

    @property
    def views(self) -> int:
        """Augmented views per frame stored beside the plain features (0: none)."""
        return int((self.attrs.get("augment") or {}).get("views", 0))

    @property
    def complete(self) -> bool:
        return bool(self.attrs.get("complete"))

    @property
    def created(self) -> bool:
        """Whether the cache's creation finished (a build killed while creating the cache leaves
        a group without attributes: the next build recreates it)."""
        return all(k in self.attrs for k in CREATED_ATTRS)

    def features(self, camera: str) -> FeatureArray:
        """The cached features of ``camera`` (read-only; index like a numpy array). Raises
        :class:`CacheError` when the cache is incomplete or a chunk marked done has no chunk
        file, and reading a chunk file that does not decode raises one naming the steps."""
        if not self.complete:
            raise CacheError(_incomplete_message(self))
        group = zarr.open_group(str(self.path), mode="r")[f"{FEATURES}/{self.fingerprint}"]
        array, flags = group[camera], group[f"done/{camera}"][:]
        if not (flags == 1).all():  # flags cleared since this CacheInfo was read (verify)
            now = CacheInfo(self.fingerprint, self.path, group.attrs.asdict())
            raise CacheError(_incomplete_message(now))
        stored_chunks = _stored_chunks(array)
        missing = [i for i in range(len(flags)) if i not in stored_chunks]
        if missing:
            raise _damage_error(self, camera, missing, missing=True)
        return FeatureArray(self, camera, array)


class FeatureArray:
    """Read-only view of one camera's features in a cache: ``[...]``, ``.oindex[...]``,
    ``np.asarray``; a chunk file that does not decode raises :class:`CacheError` naming the
    cache, camera and steps (instead of the codec's bare error)."""

    def __init__(self, info: CacheInfo, camera: str, array: zarr.Array):
        self.info, self.camera, self._array = info, camera, array
        # blosc headers against file sizes, once per chunk: a truncated chunk can decode to
        # garbage without any error, or fail with a bare codec error
        self._check = ChunkCheck(array, camera, info.path)

    shape = property(lambda self: self._array.shape)
    dtype = property(lambda self: self._array.dtype)
    chunks = property(lambda self: self._array.chunks)
    ndim = property(lambda self: self._array.ndim)

    def __len__(self) -> int:
        return self._array.shape[0]

    def __getitem__(self, selection: Any) -> np.ndarray:
        return self._read(self._array.__getitem__, selection)

    @property
    def oindex(self) -> _OIndex:
        return _OIndex(self)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def _read(self, read: Callable[[Any], np.ndarray], selection: Any) -> np.ndarray:
        first = selection[0] if isinstance(selection, tuple) else selection
        try:
            touched = np.unique(np.arange(len(self))[first] // self._array.chunks[0]).tolist()
        except Exception:  # noqa: BLE001  (an unusual selection: check every chunk)
            touched = list(range(self._array.cdata_shape[0]))
        bad = self._check.damaged(touched, len(self))
        if bad:
            raise _damage_error(self.info, self.camera, bad, missing=False)
        try:
            return read(selection)
        except (CacheError, IndexError, TypeError):
            raise
        except Exception as err:
            bad = _undecodable(self._array, touched)
            if not bad:
                raise
            raise _damage_error(self.info, self.camera, bad, missing=False) from err


class _OIndex:
    def __init__(self, features: FeatureArray):
        self._features = features

    def __getitem__(self, selection: Any) -> np.ndarray:
        return self._features._read(self._features._array.oindex.__getitem__, selection)


def list_caches(store: str | Path) -> list[CacheInfo]:
    """Every cache in ``store`` (complete or not)."""
    root = zarr.open_group(str(store), mode="r")
    if FEATURES not in root:
        return []
    group = root[FEATURES]
    return [
        CacheInfo(fp, Path(store), group[fp].attrs.asdict()) for fp in sorted(group.group_keys())
    ]


def progress(info: CacheInfo) -> tuple[int, int]:
    """``(done chunks, all chunks)`` of a cache whose creation finished."""
    group = zarr.open_group(str(info.path), mode="r")[f"{FEATURES}/{info.fingerprint}"]
    flags = [group[f"done/{c}"][:] for c in _arrays(info.attrs)]
    return int(sum(f.sum() for f in flags)), int(sum(f.size for f in flags))


def describe(info: CacheInfo) -> str:
    """``vit_nano scales=[32, 64] ... dtype=float32``, or what is known of a half-created cache."""
    if not info.created:
        group = zarr.open_group(str(info.path), mode="r")[f"{FEATURES}/{info.fingerprint}"]
        n_done = _count_done(group)
        if n_done == 0:
            return (
                "creation was interrupted before any chunk was computed (the next build "
                "recreates it)"
            )
        return (
            f"creation or removal was interrupted, {n_done} chunks computed (remove it with "
            f"python cache_features.py action=remove dataset={info.path} "
            f"fingerprint={info.fingerprint})"
        )
    augment = f" augment={info.attrs['augment']}" if info.attrs.get("augment") else ""
    return f"{describe_spec(info.attrs['spec'])} dtype={info.attrs['dtype']}{augment}"


def describe_spec(spec: dict[str, Any]) -> str:
    b = spec["backbone"]
    return (
        f"{b['name']} scales={spec['scales']} pool={spec['pool']} weights={b['weights']} "
        f"antialias={spec['antialias']} grid={spec['output_grid']}"
    )


def cache_fingerprint(
    store: str | Path,
    encoder: S2Encoder,
    cameras: list[str] | None = None,
    dtype: str = "float32",
    augment: AugmentConfig | None = None,
) -> str:
    """The fingerprint of ``encoder``'s cache on ``store``'s current frames."""
    buffer = ReplayBuffer.open(store)
    cameras = resolve_cameras(buffer, cameras)
    return fingerprint(dataset_identity(buffer, cameras), encoder.spec(), dtype, augment)


def open_cache(
    store: str | Path,
    encoder: S2Encoder,
    cameras: list[str] | None = None,
    dtype: str = "float32",
    augment: AugmentConfig | None = None,
) -> CacheInfo:
    """The complete cache of ``encoder`` (with ``augment``'s views) on ``store``'s current frames,
    or a :class:`CacheError` saying what is missing, incomplete, or different."""
    buffer = ReplayBuffer.open(store)
    cameras = resolve_cameras(buffer, cameras)
    spec = encoder.spec()
    fp = fingerprint(dataset_identity(buffer, cameras), spec, dtype, augment)
    caches = {c.fingerprint: c for c in list_caches(store)}
    if fp not in caches:
        others = "; ".join(
            f"{c.fingerprint}: {describe(c)}"
            + (
                ""
                if not c.created
                or c.attrs["dataset_identity"] == dataset_identity(buffer, c.attrs["cameras"])
                else " (stale: the dataset changed since)"
            )
            for c in caches.values()
        )
        views = f" augment={augment.spec()}" if augment is not None and augment.enabled else ""
        raise CacheError(
            f"no feature cache in {store} for encoder {describe_spec(spec)} dtype={dtype}{views} "
            f"(fingerprint {fp}); existing caches: {others or 'none'}. Build it with "
            "python cache_features.py dataset=... encoder=... (augment.views=... for views)"
        )
    info = caches[fp]
    if info.created:
        _check_record(info, dataset_identity(buffer, cameras), spec, dtype, augment)
    if not info.complete:
        raise CacheError(_incomplete_message(info))
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
    augment: AugmentConfig | None = None,
) -> CacheInfo:
    """Compute (or finish) the features of ``encoder`` for ``store`` and return the cache.

    ``on_chunk(done, total)`` is called after each chunk this process writes. The encoder's
    device is used; ``dtype`` ``bfloat16``/``float16`` runs it under autocast (GPU path).
    ``augment`` with ``views > 0`` also stores that many augmented views of every frame.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    if batch_size < 1 or chunk_steps < 1:
        raise ValueError("batch_size and chunk_steps must be >= 1")
    try:
        return _build(store, encoder, cameras, batch_size, chunk_steps, dtype, on_chunk, augment)
    except OSError as err:
        rerun = "rerun the same command: the chunks already computed are kept"
        if full := disk_full(err, f"the feature cache in {store}", rerun):
            raise full from err
        raise


def _build(store, encoder, cameras, batch_size, chunk_steps, dtype, on_chunk, augment):
    rank, world = _dist_rank_world()
    buffer = ReplayBuffer.open(store)
    if buffer.n_steps == 0:
        raise CacheError(f"{store} holds no episodes to encode")
    cameras = resolve_cameras(buffer, cameras)
    identity = dataset_identity(buffer, cameras)
    spec = encoder.spec()
    augment = augment if augment is not None and augment.enabled else None
    fp = fingerprint(identity, spec, dtype, augment)
    if rank == 0:
        _prepare_group(buffer, fp, cameras, encoder, identity, spec, dtype, chunk_steps, augment)
    _barrier(world)
    group = zarr.open_group(str(store), mode="r+")[f"{FEATURES}/{fp}"]
    if group.attrs.get("complete"):
        return CacheInfo(fp, Path(store), group.attrs.asdict())
    chunk_steps = int(group.attrs["chunk_steps"])
    n_chunks = -(-buffer.n_steps // chunk_steps)
    arrays = _arrays(group.attrs.asdict())
    todo = [
        (cam, i)
        for cam in arrays
        for i in np.flatnonzero(group[f"done/{cam}"][:] == 0).tolist()
        if i % world == rank
    ]
    total, done_before = n_chunks * len(arrays), n_chunks * len(arrays) - len(todo) * world
    if todo and len(todo) * world < total:
        logger.info("resuming cache %s: %d chunks left for this process", fp, len(todo))
    device = next(encoder.parameters()).device
    # write every chunk file, even one equal to the fill value: a missing file means a lost chunk
    writers = {cam: group[cam].with_config({"write_empty_chunks": True}) for cam in arrays}
    for n, (cam, i, frames) in enumerate(_prefetch(buffer, todo, chunk_steps, augment)):
        feats = encode_frames(encoder, frames, batch_size, dtype, device)
        start = i * chunk_steps
        writers[cam][start : start + len(feats)] = stored(feats)
        crash_point("cache.chunk")
        group[f"done/{cam}"][i] = 1
        if on_chunk is not None:
            on_chunk(min(total, done_before + (n + 1) * world), total)
    if world > 1:  # each rank's share of the build (the torchrun test checks the split)
        shares = {c: [i for k, i in todo if k == c] for c in arrays}
        logger.info("cache %s: rank %d of %d wrote chunks %s", fp, rank, world, shares)
    _barrier(world)
    if rank == 0:
        if all((group[f"done/{c}"][:] == 1).all() for c in arrays):
            crash_point("cache.done")
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
    augment: AugmentConfig | None = None,
) -> float:
    """Recompute ``n_samples`` random frames per camera and compare with the cache; returns the
    largest absolute difference, raises :class:`CacheError` beyond ``atol + rtol * |value|``
    (float16 storage rounds to ~1e-3 relative).

    First every chunk file of the cache is checked (present, decodes); damaged chunks get their
    done flags cleared, so the next build recomputes just them, and a :class:`CacheError` lists
    them."""
    info = open_cache(store, encoder, cameras, dtype, augment)
    _check_chunks(info)
    buffer = ReplayBuffer.open(store)
    rng = np.random.default_rng(seed)
    device = next(encoder.parameters()).device
    worst = 0.0
    for cam in view_arrays(cameras or info.attrs["cameras"], info.views):
        idx = np.sort(
            rng.choice(buffer.n_steps, size=min(n_samples, buffer.n_steps), replace=False)
        )
        frames = _frames(buffer, cam, idx, augment)
        live = encode_frames(encoder, frames, len(idx), dtype, device)
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
def _frames(
    buffer: ReplayBuffer, array: str, steps: slice | np.ndarray, augment: AugmentConfig | None
) -> np.ndarray:
    """The frames a cache array encodes at ``steps`` (a slice or step indices): the camera's own,
    or their augmented view."""
    camera, view = split_view(array)
    frames = buffer[camera][steps]
    if view is None:
        return frames
    return augment_frames(frames, augment, view, np.arange(buffer.n_steps)[steps])


def _prepare_group(
    buffer, fp, cameras, encoder, identity, spec, dtype, chunk_steps, augment
) -> None:
    """Create the cache's group, or check the existing one: recreate it when its creation was
    interrupted (no chunk done yet), and clear the done flags of chunks whose file is missing."""
    root = zarr.open_group(str(buffer.path), mode="r+")
    features = root.require_group(FEATURES)
    if fp in features:
        group = features[fp]
        info = CacheInfo(fp, Path(buffer.path), group.attrs.asdict())
        names = view_arrays(cameras, augment.views if augment else 0)
        arrays = [a for c in names for a in (c, f"done/{c}")]
        if info.created and all(a in group for a in arrays):
            _check_record(info, identity, spec, dtype, augment)
            attrs = info.attrs
            if attrs["n_steps"] != buffer.n_steps or sorted(attrs["cameras"]) != sorted(cameras):
                raise CacheError(
                    f"feature cache {fp} in {buffer.path} holds cameras {attrs['cameras']} and "
                    f"{attrs['n_steps']} steps, not {cameras} and {buffer.n_steps}; remove it "
                    f"with python cache_features.py action=remove dataset={buffer.path} "
                    f"fingerprint={fp}"
                )
            _repair(info, group)
            return
        n_done = _count_done(group)
        if n_done:
            raise CacheError(
                f"feature cache {fp} in {buffer.path} has {n_done} computed chunks but no "
                "attributes or arrays of its own (its creation or removal was interrupted); it is "
                "kept: remove it with python cache_features.py action=remove "
                f"dataset={buffer.path} fingerprint={fp} and rebuild"
            )
        logger.warning(
            "feature cache %s in %s was interrupted while being created (no chunk computed); "
            "recreating it",
            fp,
            buffer.path,
        )
    _create_group(
        features, buffer, fp, cameras, encoder, identity, spec, dtype, chunk_steps, augment
    )


def _create_group(
    features, buffer, fp, cameras, encoder, identity, spec, dtype, chunk_steps, augment
):
    group = features.create_group(fp, overwrite=True)
    height, width = buffer[cameras[0]].shape[1:3]
    shape = encoder.output_shape(height, width)
    n_chunks = -(-buffer.n_steps // chunk_steps)
    for cam in cameras:
        if buffer[cam].shape[1:3] != (height, width):
            raise CacheError(f"cameras {cameras} have different image sizes; cache them apart")
    for cam in view_arrays(cameras, augment.views if augment else 0):
        group.create_array(
            cam,
            shape=(buffer.n_steps, *shape),
            chunks=(chunk_steps, *shape),
            dtype="float16",
            compressors=zarr.codecs.BloscCodec(cname="zstd", clevel=1, shuffle="shuffle"),
        )
        group.require_group("done").create_array(cam, shape=(n_chunks,), chunks=(1,), dtype="uint8")
    crash_point("cache.create")
    views = (
        {"augment": augment.spec(), "arrays": view_arrays(cameras, augment.views)}
        if augment
        else {}
    )
    group.attrs.update(
        {
            **views,
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
    buffer: ReplayBuffer,
    todo: list[tuple[str, int]],
    chunk_steps: int,
    augment: AugmentConfig | None = None,
    depth: int = 2,
) -> Iterator[tuple[str, int, np.ndarray]]:
    """Yield ``(array, chunk, frames)`` while a thread reads (decompresses, augments) the next
    chunks."""

    def read(item):
        array, i = item
        return (
            array,
            i,
            _frames(buffer, array, slice(i * chunk_steps, (i + 1) * chunk_steps), augment),
        )

    with ThreadPoolExecutor(max_workers=depth) as pool:
        futures = [pool.submit(read, item) for item in todo[:depth]]
        for k in range(len(todo)):
            result = futures[k].result()
            if k + depth < len(todo):
                futures.append(pool.submit(read, todo[k + depth]))
            yield result


def _check_record(
    info: CacheInfo,
    identity: str,
    spec: dict[str, Any],
    dtype: str,
    augment: AugmentConfig | None,
) -> None:
    """The cache folder ``features/<fp>`` must hold what ``fp`` names: the fingerprint its own
    attributes record, recomputed from them, and the requested encoder, dtype, dataset and
    views. A folder renamed (or copied) to another fingerprint is refused, never read."""
    attrs = info.attrs
    recorded = attrs.get("fingerprint")
    views = AugmentConfig(**attrs["augment"]) if attrs.get("augment") else None
    try:
        computed = fingerprint(attrs["dataset_identity"], attrs["spec"], attrs["dtype"], views)
    except (KeyError, TypeError, ValueError):
        computed = None
    wanted_views = augment.spec() if augment is not None and augment.enabled else None
    same = (
        recorded in (None, info.fingerprint)  # None: written before caches recorded it
        and computed == info.fingerprint
        and attrs["spec"] == spec
        and attrs["dtype"] == dtype
        and attrs["dataset_identity"] == identity
        and (attrs.get("augment") or None) == wanted_views
    )
    if not same:
        raise CacheError(
            f"feature cache folder {FEATURES}/{info.fingerprint} in {info.path} holds the "
            f"features of another encoder or dataset (its record: fingerprint {recorded}, "
            f"{describe(info)}): it was renamed or copied there, so it is not used; remove it "
            f"with python cache_features.py action=remove dataset={info.path} "
            f"fingerprint={info.fingerprint} and rebuild"
        )


def _incomplete_message(info: CacheInfo) -> str:
    if not info.created:
        return (
            f"feature cache {info.fingerprint} in {info.path} was interrupted while being created "
            "(no chunk computed yet); rerun the build to recreate it"
        )
    done, total = progress(info)
    return (
        f"feature cache {info.fingerprint} in {info.path} is incomplete ({done}/{total} chunks); "
        "rerun the build to resume it"
    )


def _count_done(group: zarr.Group) -> int:
    """Done chunks of a cache group whatever state it is in (0 when it has no done flags)."""
    if "done" not in group:
        return 0
    return int(sum(int((a[:] == 1).sum()) for _, a in group["done"].arrays()))


def _stored_chunks(array: zarr.Array) -> set[int]:
    """Time-chunk indices of ``array`` whose chunk file exists (one listing of its keys)."""
    store = array.store_path.store
    prefix = f"{array.path}/"

    async def keys() -> set[str]:
        return {k async for k in store.list_prefix(prefix)}

    present = sync(keys())
    rest = (0,) * (array.ndim - 1)
    return {
        i
        for i in range(array.cdata_shape[0])
        if prefix + array.metadata.encode_chunk_key((i, *rest)) in present
    }


def _undecodable(array: zarr.Array, chunks: Any) -> list[int]:
    """Those of ``chunks`` (time-chunk indices) whose chunk file does not decode."""
    size, bad = array.chunks[0], []
    for i in chunks:
        try:
            array[i * size : (i + 1) * size]
        except Exception:
            bad.append(int(i))
    return bad


def _step_ranges(chunks: list[int], chunk_steps: int, n_steps: int) -> str:
    """Chunk indices -> ``"16-31, 48-55"`` (inclusive step ranges, adjacent chunks merged)."""
    ranges: list[list[int]] = []
    for i in sorted(chunks):
        start, end = i * chunk_steps, min(n_steps, (i + 1) * chunk_steps) - 1
        if ranges and ranges[-1][1] + 1 == start:
            ranges[-1][1] = end
        else:
            ranges.append([start, end])
    return ", ".join(f"{a}-{b}" for a, b in ranges)


def _damage_error(info: CacheInfo, camera: str, chunks: list[int], missing: bool) -> CacheError:
    """The reader's sentence for chunks marked done whose file is missing or does not decode."""
    steps = _step_ranges(chunks, int(info.attrs["chunk_steps"]), int(info.attrs["n_steps"]))
    what = (
        "have no chunk file although marked done"
        if missing
        else "do not decode (chunk file truncated or corrupt)"
    )
    return CacheError(
        f"feature cache {info.fingerprint} in {info.path}: camera {camera!r} steps {steps} "
        f"{what}; run python cache_features.py action=verify dataset={info.path} encoder=... "
        "(the encoder that built it) to mark the damaged chunks for recomputation, then rerun "
        "the build"
    )


def _repair(info: CacheInfo, group: zarr.Group) -> None:
    """Make the done flags true before a build: clear those of chunks whose chunk file is missing
    (this build recomputes them), and ``complete`` when a flag is not set (it goes first, so a
    kill in between leaves a cache that is still resumed, never one that reads as complete)."""
    chunk_steps, n_steps = int(info.attrs["chunk_steps"]), int(info.attrs["n_steps"])
    lost, unset = {}, False
    for cam in _arrays(info.attrs):
        flags = group[f"done/{cam}"][:]
        done = np.flatnonzero(flags == 1).tolist()
        unset |= len(done) < len(flags)
        stored_chunks = _stored_chunks(group[cam]) if done else set()
        if missing := [i for i in done if i not in stored_chunks]:
            lost[cam] = missing
    if (lost or unset) and group.attrs.get("complete"):
        group.attrs["complete"] = False
    for cam, missing in lost.items():
        for i in missing:
            group[f"done/{cam}"][i] = 0
        logger.warning(
            "feature cache %s in %s: camera %r steps %s had no chunk file although marked done; "
            "recomputing them",
            info.fingerprint,
            info.path,
            cam,
            _step_ranges(missing, chunk_steps, n_steps),
        )


def _check_chunks(info: CacheInfo) -> None:
    """Check every chunk file of a complete cache (present, decodes); clear the done flags of the
    damaged ones and raise a :class:`CacheError` listing them."""
    group = zarr.open_group(str(info.path), mode="r+")[f"{FEATURES}/{info.fingerprint}"]
    chunk_steps, n_steps = int(info.attrs["chunk_steps"]), int(info.attrs["n_steps"])
    parts, damaged = [], {}
    for cam in _arrays(info.attrs):
        array = group[cam]
        done = np.flatnonzero(group[f"done/{cam}"][:] == 1).tolist()
        stored_chunks = _stored_chunks(array)
        missing = [i for i in done if i not in stored_chunks]
        present = [i for i in done if i in stored_chunks]
        check = ChunkCheck(array, cam, info.path)
        undecodable = sorted(
            set(check.damaged(present, n_steps)) | set(_undecodable(array, present))
        )
        damaged[cam] = missing + undecodable
        for chunks, what in (
            (missing, "chunk file missing"),
            (undecodable, "chunk file does not decode"),
        ):
            if chunks:
                parts.append(
                    f"camera {cam!r} steps {_step_ranges(chunks, chunk_steps, n_steps)} ({what})"
                )
    if parts:
        group.attrs["complete"] = False  # first: a kill below leaves a cache that is resumed
        for cam, chunks in damaged.items():
            for i in chunks:
                group[f"done/{cam}"][i] = 0
        raise CacheError(
            f"feature cache {info.fingerprint} in {info.path}: {'; '.join(parts)}; their done "
            "flags were cleared, so rerunning the build recomputes just those chunks"
        )


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()
