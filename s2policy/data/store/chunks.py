"""Chunks of a store's arrays: their layout, the integrity checks of committed chunks,
finiteness, and views bounded by the commit record."""

from __future__ import annotations

import itertools
import logging
import math
import struct
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.codecs
import zarr.errors
from zarr.storage import LocalStore

from s2policy.data.store.errors import CorruptStoreError, _span, inspect_hint, repair_command

logger = logging.getLogger(__name__)

#: Target size of one chunk along time; images are chunked to a few frames, low-dim data to many.
CHUNK_BYTES = 1 << 20
#: Array attribute: every chunk of the array is stored, so a missing chunk file is damage.
CHUNKS_ATTR = "s2policy_all_chunks_written"
#: zarr skips chunks holding fill values only unless told otherwise; a missing chunk would then be
#: indistinguishable from a deleted one.
_WRITE_CONFIG = {"write_empty_chunks": True}


def _compressor(dtype: np.dtype) -> zarr.codecs.BloscCodec:
    return zarr.codecs.BloscCodec(
        cname="zstd", clevel=3, shuffle="bitshuffle" if dtype.itemsize == 1 else "shuffle"
    )


def _time_chunk(step_shape: tuple[int, ...], dtype: np.dtype) -> int:
    step_bytes = max(1, math.prod(step_shape) * dtype.itemsize)
    return int(min(4096, max(1, CHUNK_BYTES // step_bytes)))


def _writable(array: zarr.Array) -> zarr.Array:
    return array.with_config(_WRITE_CONFIG)


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def check_finite(name: str, values: np.ndarray, fix: str = "") -> None:
    """Raise ``ValueError`` naming ``name`` and the first step (row) holding NaN or inf."""
    bad = ~np.isfinite(values)
    if bad.any():
        step = int(np.argwhere(bad)[0][0])
        raise ValueError(f"{name} contains NaN or inf (first at step {step}){fix}")


class ChunkCheck:
    """Checks the chunk files holding the first ``limit`` rows of one array before zarr reads them.

    A missing file is damage when the array carries :data:`CHUNKS_ATTR` (zarr would read its fill
    value); a blosc chunk whose header disagrees with its file size or the chunk's size is damage
    whatever the array (blosc would decode garbage from a truncated file, or fail naming nothing).
    Each chunk is checked once per instance (a ``stat`` and a 16-byte read); reading errors are
    located to their chunk by :meth:`read`.
    """

    def __init__(self, array: zarr.Array, name: str, store: Path, unit: str = "steps"):
        self.array = array
        self.name = name
        self.store = store
        self.unit = unit
        self.rows = int(array.chunks[0]) if array.ndim else 1
        self.required = bool(array.attrs.get(CHUNKS_ATTR))
        grid = array.cdata_shape[1:]
        self._rest = list(itertools.product(*(range(n) for n in grid)))
        codecs = array.metadata.codecs
        blosc = (
            bool(codecs)
            and isinstance(codecs[-1], zarr.codecs.BloscCodec)
            and np.dtype(array.dtype).kind in "biufc"
        )
        self._blosc_nbytes = math.prod(array.chunks) * array.dtype.itemsize if blosc else None
        local = array.store_path.store
        self._dir = (
            Path(local.root) / array.store_path.path if isinstance(local, LocalStore) else None
        )
        self._ok: set[int] = set()

    # ------------------------------------------------------------------ which chunks
    def chunks_of(self, index: slice | int | np.ndarray) -> Iterable[int]:
        """Time-chunk indices covering ``index`` (a normalised slice, int or index array)."""
        if isinstance(index, slice):
            start, stop, step = index.start, index.stop, index.step
            if step == 1:
                return range(start // self.rows, -(-stop // self.rows)) if stop > start else ()
            return np.unique(np.arange(start, stop, step) // self.rows).tolist()
        if isinstance(index, int):
            return (index // self.rows,)
        return np.unique(np.asarray(index) // self.rows).tolist()

    def rows_of(self, chunk: int, limit: int) -> tuple[int, int]:
        return chunk * self.rows, min((chunk + 1) * self.rows, limit)

    def describe(self, chunk: int, limit: int) -> str:
        start, stop = self.rows_of(chunk, limit)
        return _span(self.unit, start, stop)

    # ------------------------------------------------------------------ checks
    def problem(self, chunk: int, limit: int) -> str | None:
        """What is wrong with the files of time-chunk ``chunk`` (None: nothing)."""
        if self._dir is None:
            return None
        for rest in self._rest:
            key = self.array.metadata.encode_chunk_key((chunk, *rest))
            file = self._dir / key
            try:
                size = file.stat().st_size
            except FileNotFoundError:
                if self.required:
                    return (
                        f"{self.name} is missing the chunk file of committed "
                        f"{self.describe(chunk, limit)} ({key})"
                    )
                continue
            if self._blosc_nbytes is None:
                continue
            with file.open("rb") as f:
                head = f.read(16)
            nbytes, cbytes = struct.unpack("<4xI4xI", head) if len(head) == 16 else (-1, -1)
            if cbytes != size or nbytes != self._blosc_nbytes:
                return (
                    f"{self.name} cannot be read at committed {self.describe(chunk, limit)}: "
                    f"chunk file {key} is truncated or damaged ({size} bytes, its blosc header "
                    f"says {cbytes} bytes holding {nbytes}, expected {self._blosc_nbytes})"
                )
        return None

    def error(self, problem: str) -> CorruptStoreError:
        return CorruptStoreError(
            f"{self.store}: {problem}; the store is damaged — {inspect_hint(self.store)}, then "
            "restore the file from a backup or keep only the episodes before it with "
            f"{repair_command(self.store)}"
        )

    def damaged(self, chunks: Iterable[int], limit: int) -> list[int]:
        """Those of ``chunks`` whose files have a problem (the others are not checked again)."""
        bad = []
        for chunk in chunks:
            if chunk in self._ok:
                continue
            if self.problem(chunk, limit):
                bad.append(int(chunk))
            else:
                self._ok.add(chunk)
        return bad

    def verify(self, chunks: Iterable[int], limit: int) -> None:
        """Raise the store's sentence for the first of ``chunks`` that has a problem."""
        bad = self.damaged(chunks, limit)
        if bad:
            raise self.error(self.problem(bad[0], limit))

    def read(self, chunks: Iterable[int], limit: int, read: Callable[[], np.ndarray]) -> np.ndarray:
        """``read()`` after checking ``chunks``; a failure to decode is located to its chunk."""
        chunks = list(chunks)
        self.verify(chunks, limit)
        try:
            return read()
        except (IndexError, TypeError, KeyError, MemoryError):
            raise
        except Exception as err:
            for chunk in chunks:
                start, stop = self.rows_of(chunk, limit)
                try:
                    self.array[start:stop]
                except Exception as chunk_err:
                    raise self.error(
                        f"{self.name} cannot be read at committed {self.describe(chunk, limit)}: "
                        f"{type(chunk_err).__name__}: {chunk_err}"
                    ) from err
            raise


class ArrayView:
    """Read-only view of a ``data/<key>`` array limited to the committed steps ``[0, n_steps)``.

    Reads check the chunk files they need first (:class:`ChunkCheck`): damage is an error naming
    the array and the steps, never zeros.
    """

    def __init__(self, array: zarr.Array, n_steps: int, check: ChunkCheck | None = None):
        self._array = array
        self._n = n_steps
        self._check = check

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
            return self._read(first, lambda: self._array[(first, *rest)])
        if isinstance(first, (int, np.integer)):
            if not -self._n <= first < self._n:
                raise IndexError(f"step {first} out of range for {self._n} steps")
            first = int(first) % self._n
            return self._read(first, lambda: self._array[(first, *rest)])
        idx = np.asarray(first)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        if idx.size and (idx.min() < -self._n or idx.max() >= self._n):
            raise IndexError(f"step index out of range for {self._n} steps")
        idx = idx % max(self._n, 1)
        return self._read(idx, lambda: self._array.oindex[(idx, *rest)])

    def _read(self, first: slice | int | np.ndarray, read: Callable[[], np.ndarray]) -> np.ndarray:
        if self._check is None:
            return read()
        return self._check.read(self._check.chunks_of(first), self._n, read)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)
