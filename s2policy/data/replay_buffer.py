"""Episodes stored in a zarr 3 store: ``data/<key>`` arrays over all steps + ``meta/episode_ends``.

The layout is diffusion_policy's: every ``data/<key>`` array has shape ``(T_total, ...)``, episodes
are contiguous, and ``meta/episode_ends[i]`` is the exclusive end step of episode ``i``. Per-episode
scalars (seeds, success flags) live beside it as ``meta/<name>`` arrays of length ``n_episodes``.

Crash safety: a store is created in a hidden sibling folder and renamed into place when complete.
An episode is appended to the ``data/`` arrays first, then to the other ``meta/`` arrays, and
``meta/episode_ends`` is extended last. ``episode_ends`` is the commit record: steps past its last
value, per-episode entries past its length (at most one: an append removes what a failed one left)
and one trailing fill-value entry (an ``episode_ends`` append killed between its resize and its
write) belong to an interrupted write. Readers never see them (:attr:`ReplayBuffer.n_steps` bounds
every view) and opening the store with ``mode="a"`` removes them; a store that failed before its
first commit is emptied, whatever keys its partial arrays had. Chunk files are written atomically
by zarr's ``LocalStore``, so committed episodes stay intact even when a write is killed.

Anything else is damage, not an interrupted write: a non-increasing or out-of-range
``episode_ends``, per-episode arrays shorter than it, ``data/`` arrays shorter than its last end.
Such a store is refused, read or append, and left as it is; ``python -m
s2policy.data.replay_buffer action=inspect store=<path>`` lists what is wrong, and ``action=repair``
(with ``confirm=true``) keeps the longest valid prefix of committed episodes.

Every chunk is written, even one of fill values only, and arrays say so (attribute
:data:`CHUNKS_ATTR`): a missing chunk file of committed data is an error naming the array and the
steps, never zarr's fill value; a chunk whose blosc header does not match its file (truncated) or
that fails to decode is one too. Arrays written before that attribute existed read absent chunks
as zeros, as zarr always did (zarr skipped all-zero chunks then).

The commit record's update does not depend on what a chunk held before: zarr keeps the old
values of a chunk that a resize shrank (a repair, a removed interrupted write), so before
``meta/episode_ends`` grows by one entry its last chunk is rewritten from the committed values
(zarr then writes the whole chunk, fill values past the end): an append killed between the
resize and the write always leaves a trailing fill-value (0) entry, never a stale end.

Concurrency: one writer per store. :meth:`ReplayBuffer.create` and ``ReplayBuffer.open(path,
"a")`` take an exclusive lock (:class:`s2policy.fileio.WriterLock`, ``.<name>.lock`` beside the
store) held until :meth:`ReplayBuffer.close` (or the end of the process); a second writer is
refused with a sentence naming the holder. Readers take no lock and may open a store while it is
written: they see the episodes committed when they opened it, never part of one.

Crash tests: :func:`crash_point` ends the process at a named point of a write when the
environment variable ``S2POLICY_CRASH_AT`` names it (``name`` or ``name@N``: its N-th time).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import shutil
import struct
import sys
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.codecs
import zarr.errors
from zarr.storage import LocalStore

from s2policy.fileio import (
    LockedError,
    WriterLock,
    check_replaceable,
    crash_point,
    current_writer,
    disk_full,
)

logger = logging.getLogger(__name__)

LAYOUT = "s2policy.replay_buffer"
LAYOUT_VERSION = 1
#: Target size of one chunk along time; images are chunked to a few frames, low-dim data to many.
CHUNK_BYTES = 1 << 20
_RESERVED_ATTRS = ("layout", "layout_version")
#: Array attribute: every chunk of the array is stored, so a missing chunk file is damage.
CHUNKS_ATTR = "s2policy_all_chunks_written"
#: zarr skips chunks holding fill values only unless told otherwise; a missing chunk would then be
#: indistinguishable from a deleted one.
_WRITE_CONFIG = {"write_empty_chunks": True}
#: The named points of a write (see :func:`s2policy.fileio.crash_point`).
CRASH_POINTS = (
    "store_create",
    "episode_data",
    "episode_meta",
    "episode_commit_resize",
    "episode_commit",
)
#: What a second writer of a store is told to do instead.
_ONE_WRITER = "one writer per store (readers may open it meanwhile)"
_RERUN = "rerun the same command: it continues after the last saved episode"
COMMAND = "python -m s2policy.data.replay_buffer"


class CorruptStoreError(ValueError):
    """A store whose committed data or commit record is damaged (nothing was changed)."""


class StoreLockedError(LockedError, ValueError):
    """Another writer holds the store (nothing was changed)."""


def is_store(path: Path) -> bool:
    """Whether ``path`` is a ReplayBuffer store s2policy wrote (complete, or whose creation was
    interrupted): what ``overwrite`` may replace."""
    if not (path / "zarr.json").is_file():
        return False
    try:
        root = zarr.open_group(str(path), mode="r")
    except Exception:  # noqa: BLE001  (not a zarr group)
        return False
    return root.attrs.get("layout") == LAYOUT or (
        not root.attrs.asdict() and _interrupted_creation(root)
    )


def inspect_hint(path: Path | str) -> str:
    return f"inspect it with `{COMMAND} action=inspect store={path}`"


def repair_command(path: Path | str) -> str:
    return f"`{COMMAND} action=repair store={path} confirm=true`"


def _span(word: str, start: int, stop: int) -> str:
    """``episodes 3-5`` / ``episode 3`` for the half-open range ``[start, stop)``."""
    if stop - start == 1:
        return f"{word.rstrip('s')} {start}"
    return f"{word} {start}-{stop - 1}"


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


# ---------------------------------------------------------------------- the commit record
@dataclass
class Commit:
    """What ``meta/episode_ends`` and the arrays' lengths say (no data chunk is read)."""

    #: Every entry of ``meta/episode_ends``, committed or not.
    ends: np.ndarray
    #: Episodes committed: the valid prefix of ``ends``.
    committed: int
    #: Episodes a repair keeps: ``committed`` bounded by every ``meta/`` array's length.
    keep: int
    #: Why this is damage, not an interrupted write (empty: consistent).
    problems: list[str] = field(default_factory=list)
    #: ``data/<key>`` and ``meta/<key>`` (without ``episode_ends``) -> length.
    data_len: dict[str, int] = field(default_factory=dict)
    meta_len: dict[str, int] = field(default_factory=dict)
    #: False when ``meta/episode_ends`` itself cannot be read.
    readable: bool = True

    def steps(self, episodes: int) -> int:
        return int(self.ends[episodes - 1]) if episodes else 0


def examine_commit(root: zarr.Group, strict: bool = True) -> Commit:
    """Check ``meta/episode_ends`` against the arrays: an interrupted write leaves only a tail
    (data past the last end, one more ``meta/`` entry, one trailing fill-value end); anything else
    is a problem.

    The commit record is read first, the arrays' lengths after it: a writer appends data, then
    meta, then the record, so arrays read later are never shorter than the record needs. Beside
    an active writer (``strict=False``), per-episode arrays longer than the record by two or more
    are that writer's episodes, not damage.
    """
    try:
        ends = np.asarray(root["meta/episode_ends"][:], dtype=np.int64)
        error = None
    except Exception as err:  # a damaged chunk of the commit record itself
        ends, error = np.zeros(0, np.int64), err
    data_len = {
        f"data/{k}": int(root["data"][k].shape[0]) for k in sorted(root["data"].array_keys())
    }
    meta_len = {
        f"meta/{k}": int(root["meta"][k].shape[0])
        for k in sorted(root["meta"].array_keys())
        if k != "episode_ends"
    }
    if error is not None:
        problem = (
            f"meta/episode_ends (the commit record) cannot be read: {type(error).__name__}: {error}"
        )
        return Commit(ends, 0, 0, [problem], data_len, meta_len, readable=False)
    shortest = min(data_len, key=data_len.__getitem__) if data_len else None
    limit = data_len[shortest] if shortest else 0
    committed, prev, broken = 0, 0, None
    for i, end in enumerate(ends.tolist()):
        if end <= 0:
            broken = f"meta/episode_ends[{i}] = {end} is not positive"
        elif end <= prev:
            broken = (
                f"meta/episode_ends[{i}] = {end} is not greater than "
                f"meta/episode_ends[{i - 1}] = {prev}"
            )
        elif end > limit:
            where = f"{shortest} ({limit} steps)" if shortest else "the data (no data/ arrays)"
            broken = f"meta/episode_ends[{i}] = {end} is past the end of {where}"
        else:
            prev, committed = end, committed + 1
            continue
        break
    problems = []
    interrupted_commit = committed == len(ends) - 1 and ends[-1] == 0  # resized, never written
    if broken and not interrupted_commit:
        problems.append(broken)
    for name, n in meta_len.items():
        longer = n > committed + 1 and not problems and strict  # else: a broken record's length
        if n < committed or longer:
            problems.append(f"{name} has {n} entries for {committed} episodes")
    keep = min([committed, *meta_len.values()])
    return Commit(ends, committed, keep, problems, data_len, meta_len)


def damaged_message(path: Path, commit: Commit) -> str:
    """The one sentence refusing a damaged store."""
    if not commit.readable:
        fix = "restore meta/episode_ends from a backup"
    else:
        dropped = len(commit.ends) - commit.keep
        removing = (
            f" (removing {_span('episodes', commit.keep, len(commit.ends))})" if dropped else ""
        )
        fix = f"keep its first {commit.keep} valid episodes{removing} with {repair_command(path)}"
    return (
        f"{path} is damaged, not an interrupted write: {'; '.join(commit.problems)}; nothing was "
        f"changed — {inspect_hint(path)}, and {fix}"
    )


def _open_group(path: Path, mode: str) -> zarr.Group:
    if not path.exists():
        raise FileNotFoundError(
            f"no ReplayBuffer store at {path}; collect demonstrations first "
            "(python collect_demos.py task=<task> ...)"
        )
    try:
        return zarr.open_group(str(path), mode="r+" if mode == "a" else "r")
    except (zarr.errors.GroupNotFoundError, FileNotFoundError, ValueError) as err:
        raise ValueError(f"{path} is not a zarr group, so not a ReplayBuffer store: {err}") from err


def _missing_parts(root: zarr.Group) -> list[str]:
    return [k for k in ("data", "meta/episode_ends") if k not in root]


def _interrupted_creation(root: zarr.Group) -> bool:
    """Whether ``root`` is what a store creation killed part-way leaves: no array at all, only
    the ``data``/``meta`` groups, and no attributes or this layout's."""
    attrs = root.attrs.asdict()
    if attrs and attrs.get("layout") != LAYOUT:
        return False
    members = list(root.members(max_depth=None))
    return all(
        name in ("data", "meta") and not isinstance(node, zarr.Array) for name, node in members
    )


def _create_ends(meta: zarr.Group) -> zarr.Array:
    return meta.create_array(
        "episode_ends",
        shape=(0,),
        chunks=(4096,),
        dtype="int64",
        attributes={CHUNKS_ATTR: True},
        config=_WRITE_CONFIG,
    )


class ReplayBuffer:
    """A store of episodes; create with :meth:`create`, open with :meth:`open`."""

    def __init__(
        self,
        root: zarr.Group,
        path: Path,
        mode: str,
        ends: np.ndarray | None = None,
        lock: WriterLock | None = None,
    ):
        self._root = root
        self.path = path
        self.mode = mode
        if ends is None:
            ends = root["meta/episode_ends"][:]
        self._ends = np.asarray(ends, dtype=np.int64)
        self._checks: dict[str, ChunkCheck] = {}
        self._lock = lock
        # a writer that is never closed frees its lock when it is collected (or at exit)
        self._release = weakref.finalize(self, lock.release) if lock is not None else None

    def close(self) -> None:
        """Stop writing: free the store's writer lock (a read-only buffer has none). The buffer
        stays readable; writing again needs ``ReplayBuffer.open(path, "a")``."""
        if self._release is not None:
            self._release()
        self.mode = "r"

    def __enter__(self) -> ReplayBuffer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    def _lock_for_writing(path: Path) -> WriterLock:
        try:
            return WriterLock(path, _ONE_WRITER)
        except LockedError as err:
            raise StoreLockedError(str(err)) from None

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(
        cls,
        path: str | Path,
        attrs: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        sources: Sequence[str | Path] = (),
    ) -> ReplayBuffer:
        """Create an empty store at ``path``; ``attrs`` (JSON-able) go to the root attributes.

        The store is written beside ``path`` (``.<name>.creating``) and renamed into place, so a
        creation killed part-way leaves no store behind (the next creation removes the leftover).
        An empty folder at ``path`` counts as free; ``overwrite`` replaces only a store (never a
        folder or file of something else, nor a folder holding one of ``sources``: what the
        command reads). The returned buffer holds the store's writer lock until :meth:`close`.
        """
        path = Path(path)
        if path.exists() and not overwrite and not _is_empty_dir(path):
            raise FileExistsError(
                f"{path} already exists; open it with ReplayBuffer.open(path, 'a') to append, "
                "or pass overwrite=True to replace it"
            )
        if overwrite:
            check_replaceable(path, is_store(path), "a ReplayBuffer store", sources)
        lock = cls._lock_for_writing(path)
        try:
            if overwrite:  # again, under the lock: another writer may have made it meanwhile
                check_replaceable(path, is_store(path), "a ReplayBuffer store", sources)
            elif path.exists() and not _is_empty_dir(path):
                raise FileExistsError(f"{path} was created by another writer meanwhile")
            tmp = path.parent / f".{path.name}.creating"
            if tmp.exists():  # what a creation killed before its rename left: an empty store
                shutil.rmtree(tmp)
            tmp.parent.mkdir(parents=True, exist_ok=True)
            try:
                root = zarr.open_group(str(tmp), mode="w")
                root.attrs.update(
                    {**dict(attrs or {}), "layout": LAYOUT, "layout_version": LAYOUT_VERSION}
                )
                root.create_group("data")
                _create_ends(root.create_group("meta"))
            except BaseException as err:
                shutil.rmtree(tmp, ignore_errors=True)
                if full := disk_full(err, tmp, _RERUN):
                    raise full from err
                raise
            crash_point("store_create")
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
            os.replace(tmp, path)
            root = zarr.open_group(str(path), mode="r+")
        except BaseException:
            lock.release()
            raise
        return cls(root, path, "a", np.zeros(0, np.int64), lock)

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> ReplayBuffer:
        """Open an existing store read-only (``"r"``) or for appending (``"a"``).

        Opening with ``"a"`` removes what an interrupted write left past the last committed episode
        (and completes a store whose creation was interrupted). A damaged store (see the module
        docstring) raises :class:`CorruptStoreError` and is left untouched.
        """
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        path = Path(path)
        if mode == "r":
            return cls._open(path, mode, None)
        _open_group(path, "r")  # no lock file beside a path that is not a store
        lock = cls._lock_for_writing(path)
        try:
            return cls._open(path, mode, lock)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def _open(cls, path: Path, mode: str, lock: WriterLock | None) -> ReplayBuffer:
        root = _open_group(path, mode)
        missing = _missing_parts(root)
        if missing and _interrupted_creation(root):
            if mode == "r":
                raise ValueError(
                    f"{path} is an incomplete ReplayBuffer store: its creation was interrupted "
                    "before any episode was saved; rerun the collection (or open it with "
                    "mode='a') to complete it"
                )
            logger.warning("%s: completing a store whose creation was interrupted", path)
            if "layout" not in root.attrs:
                root.attrs.update({"layout": LAYOUT, "layout_version": LAYOUT_VERSION})
            root.require_group("data")
            _create_ends(root.require_group("meta"))
        elif missing:
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
        # a reader beside an active writer may see arrays grown past the record it read
        strict = mode == "a" or current_writer(path) is None
        commit = examine_commit(root, strict=strict)
        if commit.problems:
            raise CorruptStoreError(damaged_message(path, commit))
        if commit.committed < len(commit.ends):
            (logger.warning if mode == "a" else logger.info)(
                "%s: ignoring %d uncommitted episode entries from an interrupted write",
                path,
                len(commit.ends) - commit.committed,
            )
        buffer = cls(root, path, mode, commit.ends[: commit.committed], lock)
        if mode == "a":
            buffer._drop_uncommitted()
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
        array = self._root["data"][key]
        return ArrayView(array, self.n_steps, self._check(f"data/{key}", array))

    def _check(self, name: str, array: zarr.Array) -> ChunkCheck:
        check = self._checks.get(name)
        if check is None:
            unit = "steps" if name.startswith("data/") else "episodes"
            check = self._checks[name] = ChunkCheck(array, name, self.path, unit)
        return check

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
        return {k: self[k][sl] for k in (keys or self.keys())}

    def get_meta(self, key: str) -> np.ndarray:
        """Per-episode values ``meta/<key>`` for the committed episodes."""
        if key not in self.meta_keys():
            raise KeyError(f"no meta key {key!r} in {self.path}; keys: {self.meta_keys()}")
        array = self._root["meta"][key]
        return ArrayView(array, self.n_episodes, self._check(f"meta/{key}", array))[:]

    # ------------------------------------------------------------------ writing
    def add_episode(
        self, data: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None
    ) -> None:
        """Append one episode: ``data`` maps keys to arrays ``(T, ...)`` of equal length ``T``.

        ``meta`` maps names to one scalar for this episode, stored in ``meta/<name>``. The first
        episode fixes the keys, per-step shapes and dtypes; later ones must match. Float arrays
        must be finite. What a failed append left is removed first; a damaged chunk the append
        would rewrite (the last, partly filled one) is refused before anything is written.
        """
        self._check_writable()
        data = {k: np.asarray(v) for k, v in data.items()}
        meta = {k: np.asarray(v) for k, v in (meta or {}).items()}
        self._validate_episode(data, meta)
        self._verify_last_chunks()
        try:
            self._append(data, meta)
        except OSError as err:
            if full := disk_full(err, self.path, _RERUN):
                raise full from err
            raise

    def _append(self, data: dict[str, np.ndarray], meta: dict[str, np.ndarray]) -> None:
        self._drop_uncommitted()
        dgroup, mgroup = self._root["data"], self._root["meta"]
        for i, (key, value) in enumerate(data.items()):
            if key not in dgroup:
                dgroup.create_array(
                    key,
                    shape=(0, *value.shape[1:]),
                    chunks=(_time_chunk(value.shape[1:], value.dtype), *value.shape[1:]),
                    dtype=value.dtype,
                    compressors=_compressor(value.dtype),
                    attributes={CHUNKS_ATTR: True},
                    config=_WRITE_CONFIG,
                )
            _writable(dgroup[key]).append(value, axis=0)
            if i == 0:
                crash_point("episode_data")
        for key, value in meta.items():
            if key not in mgroup:
                mgroup.create_array(
                    key,
                    shape=(0,),
                    chunks=(4096,),
                    dtype=value.dtype,
                    attributes={CHUNKS_ATTR: True},
                    config=_WRITE_CONFIG,
                )
            _writable(mgroup[key]).append(value.reshape(1), axis=0)
        crash_point("episode_meta")
        new_end = self.n_steps + len(next(iter(data.values())))
        ends, n = _writable(mgroup["episode_ends"]), self.n_episodes
        self._clear_next_end(ends, n)
        ends.resize((n + 1,))
        crash_point("episode_commit_resize")  # the record grown, its entry not yet written
        ends[n] = new_end
        self._ends = np.append(self._ends, new_end)
        crash_point("episode_commit")

    def _clear_next_end(self, ends: zarr.Array, n: int) -> None:
        """Make the entry ``n`` that the next resize of ``meta/episode_ends`` exposes read as the
        fill value (0), whatever its chunk held: a chunk a shrink left keeps stale entries."""
        rows = int(ends.chunks[0])
        start = n - n % rows
        if n > start:  # a whole-chunk write from the committed values: fill past them
            ends[start:n] = self._ends[start:n]
            return
        local = ends.store_path.store
        if isinstance(local, LocalStore):  # a chunk past the end that a killed shrink left
            key = ends.metadata.encode_chunk_key((n // rows,))
            (Path(local.root) / ends.store_path.path / key).unlink(missing_ok=True)

    def _check_writable(self) -> None:
        if self.mode != "a":
            raise PermissionError(
                f"{self.path} is open read-only (or its writer was closed); open it with "
                "ReplayBuffer.open(path, 'a') to write"
            )

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
        if self.n_episodes == 0:
            return  # arrays of a first episode that was never committed do not count
        existing = self.keys()
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
        if set(existing_meta) != set(meta):
            raise ValueError(
                f"episode meta keys {sorted(meta)} do not match the store's {existing_meta}"
            )

    def _verify_last_chunks(self) -> None:
        """The partly filled last chunk of every array is read back and rewritten by an append:
        check it first (zarr would take a missing one for fill values and store them)."""
        for group, count in (("data", self.n_steps), ("meta", self.n_episodes)):
            if count == 0:
                continue
            for key in self._root[group].array_keys():
                if key == "episode_ends":
                    continue
                check = self._check(f"{group}/{key}", self._root[group][key])
                if count % check.rows:
                    check.verify([(count - 1) // check.rows], count)

    # ------------------------------------------------------------------ recovery
    def _drop_uncommitted(self) -> None:
        """Remove what an interrupted write left past the committed steps/episodes: resize every
        array to them, or, before the first commit, remove the partial arrays altogether."""
        n_steps, n_eps = self.n_steps, self.n_episodes
        dgroup, mgroup = self._root["data"], self._root["meta"]
        dropped = []
        for group, count, unit in ((dgroup, n_steps, "steps"), (mgroup, n_eps, "entries")):
            for key in sorted(group.array_keys()):
                if key == "episode_ends":
                    continue
                arr = group[key]
                if n_eps == 0:
                    dropped.append(f"{group.basename}/{key}: all {arr.shape[0]} {unit} (removed)")
                    del group[key]
                elif arr.shape[0] != count:
                    dropped.append(f"{group.basename}/{key}: {arr.shape[0] - count} {unit}")
                    arr.resize((count, *arr.shape[1:]))
        ends = mgroup["episode_ends"]
        if ends.shape[0] != n_eps:
            dropped.append(f"meta/episode_ends: {ends.shape[0] - n_eps} entries")
            ends.resize((n_eps,))
        if dropped:
            self._checks.clear()
            logger.warning("%s: removed an interrupted write (%s)", self.path, "; ".join(dropped))

    def __repr__(self) -> str:
        return (
            f"ReplayBuffer({str(self.path)!r}, mode={self.mode!r}, episodes={self.n_episodes}, "
            f"steps={self.n_steps}, keys={self.keys()})"
        )


# ---------------------------------------------------------------------- inspect / repair
@dataclass
class StoreReport:
    """What :func:`examine_store` found: the commit record, damaged chunks, what a repair keeps."""

    path: Path
    #: None when the store has no commit record (see ``note``).
    commit: Commit | None
    #: Problems of committed chunks (missing, truncated, undecodable).
    chunk_problems: list[str] = field(default_factory=list)
    #: Episodes a repair keeps: the longest valid committed prefix.
    keep: int = 0
    arrays: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        return [*(self.commit.problems if self.commit else []), *self.chunk_problems]

    @property
    def keep_steps(self) -> int:
        return self.commit.steps(self.keep) if self.commit else 0

    def removals(self) -> list[tuple[str, int, int, str]]:
        """``(array, length, new length, unit)`` of every array a repair shrinks."""
        if self.commit is None or not self.commit.readable:
            return []
        out = [
            (name, n, self.keep_steps, "steps")
            for name, n in self.commit.data_len.items()
            if n > self.keep_steps
        ]
        out += [
            (name, n, self.keep, "entries")
            for name, n in self.commit.meta_len.items()
            if n > self.keep
        ]
        if len(self.commit.ends) > self.keep:
            out.append(("meta/episode_ends", len(self.commit.ends), self.keep, "entries"))
        return out

    def removal_text(self) -> str:
        n_ends = len(self.commit.ends) if self.commit else 0
        what = (
            _span("episodes", self.keep, n_ends)
            if n_ends > self.keep
            else "no committed episode, only what an interrupted write left"
        )
        groups: dict[tuple[str, int, int, str], list[str]] = {}
        for name, n, m, unit in self.removals():
            group = name.split("/")[0] if name != "meta/episode_ends" else name
            groups.setdefault((group, n, m, unit), []).append(name)
        sizes = {"data": len(self.commit.data_len), "meta": len(self.commit.meta_len)}
        parts = []
        for (group, n, m, unit), names in groups.items():
            every = len(names) > 1 and len(names) == sizes.get(group)
            label = f"every {'per-episode ' * (group == 'meta')}{group}/ array"
            parts.append(f"{label if every else ', '.join(names)} {n} -> {m} {unit}")
        details = ", ".join(parts)
        return f"{what} ({details})"

    def kept_text(self) -> str:
        if not self.keep:
            return "no episodes"
        return f"{_span('episodes', 0, self.keep)} (steps 0-{self.keep_steps - 1})"


def _first_bad_chunk(
    check: ChunkCheck, limit: int, verify: bool
) -> tuple[int, str] | tuple[None, None]:
    for chunk in range(-(-limit // check.rows)):
        problem = check.problem(chunk, limit)
        if problem is None and verify:
            start, stop = check.rows_of(chunk, limit)
            try:
                check.array[start:stop]
            except Exception as err:
                problem = (
                    f"{check.name} cannot be read at committed {check.describe(chunk, limit)}: "
                    f"{type(err).__name__}: {err}"
                )
        if problem:
            return chunk, problem
    return None, None


def examine_store(path: str | Path, verify: bool = True) -> StoreReport:
    """Everything :func:`inspect_store` prints: the commit record's consistency, and every chunk
    file of committed data (present, with a matching header; decoded too when ``verify``)."""
    path = Path(path)
    root = _open_group(path, "r")
    missing = _missing_parts(root)
    if missing:
        if _interrupted_creation(root):
            note = "its creation was interrupted before any episode was saved; the next collection "
            note += "(or ReplayBuffer.open(path, 'a')) completes it"
            return StoreReport(path, None, notes=[note])
        raise ValueError(
            f"{path} is not a ReplayBuffer store: missing {', '.join(missing)} "
            "(expected layout: data/<key> arrays + meta/episode_ends)"
        )
    writer = current_writer(path)  # a writer appending now: longer arrays are its episodes
    commit = examine_commit(root, strict=writer is None)
    report = StoreReport(path, commit, keep=commit.keep)
    if writer is not None:
        report.notes.append(f"being written by {writer}: this is the state when it was read")
    for group in ("data", "meta"):
        for key in sorted(root[group].array_keys()):
            arr = root[group][key]
            report.arrays[f"{group}/{key}"] = (
                f"{tuple(arr.shape)} {arr.dtype}, chunks of {arr.chunks[0]}"
            )
            if not arr.attrs.get(CHUNKS_ATTR):
                report.notes.append(
                    f"{group}/{key} was written before s2policy stored every chunk: a missing "
                    "chunk file of it reads as zeros and cannot be told from all-zero data"
                )
    if not commit.readable:
        return report
    ends = commit.ends
    limit_steps = commit.steps(report.keep)
    for key in sorted(root["data"].array_keys()):
        check = ChunkCheck(root["data"][key], f"data/{key}", path, "steps")
        chunk, problem = _first_bad_chunk(check, limit_steps, verify)
        if problem:
            report.chunk_problems.append(problem)
            first_bad = chunk * check.rows
            report.keep = min(
                report.keep, int(np.searchsorted(ends[: report.keep], first_bad, "right"))
            )
    for key in sorted(root["meta"].array_keys()):
        if key == "episode_ends":
            continue
        check = ChunkCheck(root["meta"][key], f"meta/{key}", path, "episodes")
        chunk, problem = _first_bad_chunk(check, commit.keep, verify)
        if problem:
            report.chunk_problems.append(problem)
            report.keep = min(report.keep, chunk * check.rows)
    if not report.problems and report.removals():
        report.notes.append(
            f"an interrupted write left {report.removal_text()} past the last committed episode; "
            "the next append or a repair removes it"
        )
    return report


def inspect_store(path: str | Path, verify: bool = True) -> StoreReport:
    """Print a store's episodes, steps, arrays and every inconsistency found."""
    report = examine_store(path, verify)
    print(report.path)
    commit = report.commit
    if commit is None:
        print(f"  empty: {report.notes[0]}")
        return report
    lengths = sorted(set(commit.data_len.values())) or [0]
    held = f"{lengths[0]}" if len(lengths) == 1 else f"{lengths[0]}-{lengths[-1]}"
    print(
        f"  episodes: {len(commit.ends)} entries in meta/episode_ends, {commit.committed} valid; "
        f"steps: {commit.steps(commit.committed)} committed, the data/ arrays hold {held}"
    )
    for name, desc in report.arrays.items():
        print(f"  {name}: {desc}")
    for note in report.notes:
        print(f"  note: {note}")
    for problem in report.problems:
        print(f"  problem: {problem}")
    if report.problems:
        removing = report.removal_text() if report.removals() else "nothing"
        print(
            f"  repair: keeps {report.kept_text()} and removes {removing}: "
            f"{repair_command(report.path)}"
            if commit.readable
            else "  repair: not possible (the commit record is unreadable); restore "
            "meta/episode_ends from a backup"
        )
    else:
        print("  no problems")
    return report


def repair_store(path: str | Path, confirm: bool = False, verify: bool = True) -> StoreReport:
    """Keep the longest valid committed prefix of episodes; without ``confirm`` only say what
    would be removed."""
    report = examine_store(path, verify)
    path = report.path
    if report.commit is None:
        print(f"{path}: nothing to repair ({report.notes[0]})")
        return report
    if not report.commit.readable:
        raise CorruptStoreError(damaged_message(path, report.commit))
    removals = report.removals()
    if not removals:
        print(
            f"{path}: nothing to repair ({report.keep} episodes, {report.keep_steps} steps, "
            "no problems)"
        )
        return report
    if not confirm:
        print(
            f"{path}: repair would remove {report.removal_text()} and keep {report.kept_text()}; "
            "nothing was changed — rerun with confirm=true to do it"
        )
        return report
    try:
        lock = WriterLock(path, _ONE_WRITER)
    except LockedError as err:
        raise StoreLockedError(str(err)) from None
    with lock:
        if examine_store(path, verify).removals() != removals:
            raise StoreLockedError(f"{path} changed while it was examined; rerun the repair")
        root = zarr.open_group(str(path), mode="r+")
        order = sorted(removals, key=lambda r: r[0] != "meta/episode_ends")  # the record first
        for name, _, new, _ in order:
            arr = root[name]
            arr.resize((new, *arr.shape[1:]))
    print(f"{path}: removed {report.removal_text()}; kept {report.kept_text()}")
    return report


ACTIONS = ("inspect", "repair")


@dataclass
class StoreConfig:
    """``configs/store.yaml``: ``action=inspect`` or ``action=repair`` of the store ``store``."""

    action: str = "???"
    #: The ReplayBuffer store (a ``.zarr`` folder).
    store: str = "???"
    #: repair: actually remove the damaged episodes (false: only print what would be removed).
    confirm: bool = False
    #: Decompress every chunk of committed data (false: only check the chunk files and headers).
    verify: bool = True

    def __post_init__(self):
        if self.action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}, got {self.action!r}")
        if self.confirm and self.action != "repair":
            raise ValueError("confirm=true applies to action=repair only")


def run(cfg: StoreConfig) -> None:
    if cfg.action == "inspect":
        if inspect_store(cfg.store, cfg.verify).problems:
            sys.exit(1)
    else:
        repair_store(cfg.store, cfg.confirm, cfg.verify)


def main(argv: Sequence[str] | None = None) -> None:
    """``s2policy-store action=inspect|repair store=... [confirm=true]`` (``argv``: in-process)."""
    from s2policy.hydra_app import run_hydra, schemas

    run_hydra("store", "replay_buffer", run, argv, schemas(store_schema=StoreConfig))


if __name__ == "__main__":
    main()
