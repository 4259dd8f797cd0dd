"""``python -m s2policy.data.store action=inspect|repair``: what is wrong with a store, and a repair
that keeps its longest valid prefix of committed episodes."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr
import zarr.codecs
import zarr.errors

from s2policy.data.store.chunks import CHUNKS_ATTR, ChunkCheck
from s2policy.data.store.commit import (
    Commit,
    _interrupted_creation,
    _missing_parts,
    _open_group,
    damaged_message,
    examine_commit,
)
from s2policy.data.store.errors import (
    _ONE_WRITER,
    CorruptStoreError,
    StoreLockedError,
    _span,
    repair_command,
)
from s2policy.fileio import (
    LockedError,
    WriterLock,
    current_writer,
)

logger = logging.getLogger(__name__)


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

    run_hydra("store", "store", run, argv, schemas(store_schema=StoreConfig))
