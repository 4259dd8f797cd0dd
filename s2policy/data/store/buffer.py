"""The episode store itself: :class:`ReplayBuffer` (create, open, append, read)."""

from __future__ import annotations

import logging
import os
import shutil
import weakref
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.codecs
import zarr.errors
from zarr.storage import LocalStore

from s2policy.data.store.chunks import (
    _WRITE_CONFIG,
    CHUNKS_ATTR,
    ArrayView,
    ChunkCheck,
    _compressor,
    _is_empty_dir,
    _time_chunk,
    _writable,
    check_finite,
)
from s2policy.data.store.commit import (
    _RESERVED_ATTRS,
    LAYOUT,
    LAYOUT_VERSION,
    _create_ends,
    _interrupted_creation,
    _missing_parts,
    _open_group,
    damaged_message,
    examine_commit,
    is_store,
)
from s2policy.data.store.errors import (
    _ONE_WRITER,
    _RERUN,
    CorruptStoreError,
    StoreLockedError,
)
from s2policy.fileio import (
    LockedError,
    WriterLock,
    check_replaceable,
    crash_point,
    current_writer,
    disk_full,
)

logger = logging.getLogger(__name__)


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
