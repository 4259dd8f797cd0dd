"""Episodes stored in a zarr 3 store: ``data/<key>`` arrays over all steps + ``meta/episode_ends``.

The layout is diffusion_policy's: every ``data/<key>`` array has shape ``(T_total, ...)``, episodes
are contiguous, and ``meta/episode_ends[i]`` is the exclusive end step of episode ``i``. Per-episode
scalars (seeds, success flags) live beside it as ``meta/<name>`` arrays of length ``n_episodes``.

Crash safety: an episode is appended to the ``data/`` arrays first, then to the other ``meta/``
arrays, and ``meta/episode_ends`` is extended last. ``episode_ends`` is the commit record: steps
past its last value, or per-episode entries past its length, belong to an interrupted write. Readers
never see them (:attr:`ReplayBuffer.n_steps` bounds every view) and opening the store with
``mode="a"`` truncates them. Chunk files are written atomically by zarr's ``LocalStore``, so
committed episodes stay intact even when a write is killed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.codecs
import zarr.errors

logger = logging.getLogger(__name__)

LAYOUT = "s2policy.replay_buffer"
LAYOUT_VERSION = 1
#: Target size of one chunk along time; images are chunked to a few frames, low-dim data to many.
CHUNK_BYTES = 1 << 20
_RESERVED_ATTRS = ("layout", "layout_version")


def _compressor(dtype: np.dtype) -> zarr.codecs.BloscCodec:
    return zarr.codecs.BloscCodec(
        cname="zstd", clevel=3, shuffle="bitshuffle" if dtype.itemsize == 1 else "shuffle"
    )


def _time_chunk(step_shape: tuple[int, ...], dtype: np.dtype) -> int:
    step_bytes = max(1, math.prod(step_shape) * dtype.itemsize)
    return int(min(4096, max(1, CHUNK_BYTES // step_bytes)))


def check_finite(name: str, values: np.ndarray, fix: str = "") -> None:
    """Raise ``ValueError`` naming ``name`` and the first step (row) holding NaN or inf."""
    bad = ~np.isfinite(values)
    if bad.any():
        step = int(np.argwhere(bad)[0][0])
        raise ValueError(f"{name} contains NaN or inf (first at step {step}){fix}")


class ArrayView:
    """Read-only view of a ``data/<key>`` array limited to the committed steps ``[0, n_steps)``."""

    def __init__(self, array: zarr.Array, n_steps: int):
        self._array = array
        self._n = n_steps

    @property
    def shape(self) -> tuple[int, ...]:
        return (self._n, *self._array.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self._array.dtype

    @property
    def chunks(self) -> tuple[int, ...]:
        return self._array.chunks

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, tuple):
            first, rest = index[0], index[1:]
        else:
            first, rest = index, ()
        if isinstance(first, slice):
            first = slice(*first.indices(self._n))
        elif isinstance(first, (int, np.integer)):
            if not -self._n <= first < self._n:
                raise IndexError(f"step {first} out of range for {self._n} steps")
            first = int(first) % self._n
        else:
            idx = np.asarray(first)
            if idx.dtype == bool:
                idx = np.flatnonzero(idx)
            if idx.size and (idx.min() < -self._n or idx.max() >= self._n):
                raise IndexError(f"step index out of range for {self._n} steps")
            return self._array.oindex[(idx % max(self._n, 1), *rest)]
        return self._array[(first, *rest)]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)


class ReplayBuffer:
    """A store of episodes; create with :meth:`create`, open with :meth:`open`."""

    def __init__(self, root: zarr.Group, path: Path, mode: str):
        self._root = root
        self.path = path
        self.mode = mode
        self._ends = np.asarray(root["meta/episode_ends"][:], dtype=np.int64)

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(
        cls, path: str | Path, attrs: Mapping[str, Any] | None = None, overwrite: bool = False
    ) -> ReplayBuffer:
        """Create an empty store at ``path``; ``attrs`` (JSON-able) go to the root attributes."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(
                f"{path} already exists; open it with ReplayBuffer.open(path, 'a') to append, "
                "or pass overwrite=True to replace it"
            )
        root = zarr.open_group(str(path), mode="w")
        root.attrs.update({**dict(attrs or {}), "layout": LAYOUT, "layout_version": LAYOUT_VERSION})
        root.create_group("data")
        meta = root.create_group("meta")
        meta.create_array("episode_ends", shape=(0,), chunks=(4096,), dtype="int64")
        return cls(root, path, "a")

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> ReplayBuffer:
        """Open an existing store read-only (``"r"``) or for appending (``"a"``).

        Opening with ``"a"`` removes what an interrupted write left past the last committed episode.
        """
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(
                f"no ReplayBuffer store at {path}; collect demonstrations first "
                "(python collect_demos.py task=<task> ...)"
            )
        try:
            root = zarr.open_group(str(path), mode="r+" if mode == "a" else "r")
        except (zarr.errors.GroupNotFoundError, FileNotFoundError, ValueError) as err:
            raise ValueError(
                f"{path} is not a zarr group, so not a ReplayBuffer store: {err}"
            ) from err
        missing = [k for k in ("data", "meta/episode_ends") if k not in root]
        if missing:
            raise ValueError(
                f"{path} is not a ReplayBuffer store: missing {', '.join(missing)} "
                "(expected layout: data/<key> arrays + meta/episode_ends)"
            )
        version = root.attrs.get("layout_version", LAYOUT_VERSION)
        if version > LAYOUT_VERSION:
            raise ValueError(
                f"{path} has layout version {version}, newer than this s2policy "
                f"({LAYOUT_VERSION}); upgrade s2policy"
            )
        buffer = cls(root, path, mode)
        buffer._ends = buffer._committed_ends()
        if mode == "a":
            buffer._truncate_uncommitted()
        return buffer

    # ------------------------------------------------------------------ reading
    @property
    def attrs(self) -> dict[str, Any]:
        """Root attributes set by the writer (env config, control rate, cameras, ...)."""
        return {k: v for k, v in self._root.attrs.asdict().items() if k not in _RESERVED_ATTRS}

    def update_attrs(self, attrs: Mapping[str, Any]) -> None:
        self._check_writable()
        if any(k in _RESERVED_ATTRS for k in attrs):
            raise ValueError(f"attribute names {_RESERVED_ATTRS} are reserved")
        self._root.attrs.update(dict(attrs))

    def keys(self) -> list[str]:
        return sorted(self._root["data"].array_keys())

    def meta_keys(self) -> list[str]:
        return sorted(k for k in self._root["meta"].array_keys() if k != "episode_ends")

    def __contains__(self, key: str) -> bool:
        return key in self.keys()

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __getitem__(self, key: str) -> ArrayView:
        if key not in self._root["data"]:
            raise KeyError(f"no data key {key!r} in {self.path}; keys: {', '.join(self.keys())}")
        return ArrayView(self._root["data"][key], self.n_steps)

    @property
    def episode_ends(self) -> np.ndarray:
        return self._ends.copy()

    @property
    def n_episodes(self) -> int:
        return len(self._ends)

    @property
    def n_steps(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(self._ends, prepend=0)

    def episode_slice(self, i: int) -> slice:
        if not -self.n_episodes <= i < self.n_episodes:
            raise IndexError(f"episode {i} out of range for {self.n_episodes} episodes")
        i %= self.n_episodes
        start = int(self._ends[i - 1]) if i > 0 else 0
        return slice(start, int(self._ends[i]))

    def get_episode(self, i: int, keys: list[str] | None = None) -> dict[str, np.ndarray]:
        sl = self.episode_slice(i)
        return {k: self._root["data"][k][sl] for k in (keys or self.keys())}

    def get_meta(self, key: str) -> np.ndarray:
        """Per-episode values ``meta/<key>`` for the committed episodes."""
        if key not in self.meta_keys():
            raise KeyError(f"no meta key {key!r} in {self.path}; keys: {self.meta_keys()}")
        return self._root["meta"][key][: self.n_episodes]

    # ------------------------------------------------------------------ writing
    def add_episode(
        self, data: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None
    ) -> None:
        """Append one episode: ``data`` maps keys to arrays ``(T, ...)`` of equal length ``T``.

        ``meta`` maps names to one scalar for this episode, stored in ``meta/<name>``. The first
        episode fixes the keys, per-step shapes and dtypes; later ones must match. Float arrays
        must be finite.
        """
        self._check_writable()
        data = {k: np.asarray(v) for k, v in data.items()}
        meta = {k: np.asarray(v) for k, v in (meta or {}).items()}
        self._validate_episode(data, meta)
        dgroup, mgroup = self._root["data"], self._root["meta"]
        for key, value in data.items():
            if key not in dgroup:
                dgroup.create_array(
                    key,
                    shape=(0, *value.shape[1:]),
                    chunks=(_time_chunk(value.shape[1:], value.dtype), *value.shape[1:]),
                    dtype=value.dtype,
                    compressors=_compressor(value.dtype),
                )
            dgroup[key].append(value, axis=0)
        for key, value in meta.items():
            if key not in mgroup:
                mgroup.create_array(key, shape=(0,), chunks=(4096,), dtype=value.dtype)
            mgroup[key].append(value.reshape(1), axis=0)
        new_end = self.n_steps + len(next(iter(data.values())))
        mgroup["episode_ends"].append(np.array([new_end], dtype=np.int64), axis=0)
        self._ends = np.append(self._ends, new_end)

    def _check_writable(self) -> None:
        if self.mode != "a":
            raise PermissionError(f"{self.path} is open read-only; open it with mode='a' to write")

    def _validate_episode(self, data: dict[str, np.ndarray], meta: dict[str, np.ndarray]) -> None:
        if not data:
            raise ValueError("an episode needs at least one data array")
        lengths = {k: (v.shape[0] if v.ndim else None) for k, v in data.items()}
        if None in lengths.values() or len(set(lengths.values())) != 1:
            raise ValueError(f"episode arrays must share their first (time) axis; got {lengths}")
        if next(iter(lengths.values())) == 0:
            raise ValueError("cannot add an empty episode (T = 0)")
        for key, value in data.items():
            if value.dtype.kind == "O":
                raise TypeError(f"data[{key!r}] has object dtype; use numeric arrays")
            if value.dtype.kind in "fc":
                check_finite(f"data[{key!r}]", value)
        for key, value in meta.items():
            if value.size != 1:
                raise ValueError(f"meta[{key!r}] must be one scalar per episode, got {value.shape}")
        existing = self.keys()
        if self.n_episodes == 0 and not existing:
            return
        if set(existing) != set(data):
            raise ValueError(
                f"episode keys {sorted(data)} do not match the store's keys {existing} "
                f"(missing: {sorted(set(existing) - set(data))}, "
                f"unexpected: {sorted(set(data) - set(existing))})"
            )
        for key, value in data.items():
            arr = self._root["data"][key]
            if tuple(arr.shape[1:]) != value.shape[1:]:
                raise ValueError(
                    f"data[{key!r}] has per-step shape {value.shape[1:]}, "
                    f"but the store holds {tuple(arr.shape[1:])}"
                )
            if not np.can_cast(value.dtype, arr.dtype, casting="same_kind"):
                raise ValueError(
                    f"data[{key!r}] has dtype {value.dtype}, the store holds {arr.dtype}"
                )
        existing_meta = self.meta_keys()
        if existing_meta and set(existing_meta) != set(meta):
            raise ValueError(
                f"episode meta keys {sorted(meta)} do not match the store's {existing_meta}"
            )

    # ------------------------------------------------------------------ recovery
    def _committed_ends(self) -> np.ndarray:
        """``episode_ends`` without entries of an interrupted write (non-increasing or too long)."""
        ends = self._ends
        data_len = min((self._root["data"][k].shape[0] for k in self.keys()), default=0)
        valid = 0
        prev = 0
        for end in ends:
            if end <= prev or end > data_len:
                break
            prev, valid = end, valid + 1
        if valid < len(ends):
            logger.warning(
                "%s: ignoring %d uncommitted episode entries from an interrupted write",
                self.path,
                len(ends) - valid,
            )
        return ends[:valid].copy()

    def _truncate_uncommitted(self) -> None:
        """Resize every array to the committed steps/episodes (what an interrupted write left)."""
        n_steps, n_eps = self.n_steps, self.n_episodes
        dropped = []
        for key in self.keys():
            arr = self._root["data"][key]
            if arr.shape[0] != n_steps:
                dropped.append(f"data/{key}: {arr.shape[0] - n_steps} steps")
                arr.resize((n_steps, *arr.shape[1:]))
        for key in [*self.meta_keys(), "episode_ends"]:
            arr = self._root["meta"][key]
            if arr.shape[0] != n_eps:
                dropped.append(f"meta/{key}: {arr.shape[0] - n_eps} entries")
                arr.resize((n_eps,))
        if dropped:
            logger.warning("%s: removed an interrupted write (%s)", self.path, "; ".join(dropped))

    def __repr__(self) -> str:
        return (
            f"ReplayBuffer({str(self.path)!r}, mode={self.mode!r}, episodes={self.n_episodes}, "
            f"steps={self.n_steps}, keys={self.keys()})"
        )
