"""The commit record (``meta/episode_ends``): what a store holds, what an interrupted write left and
what is damage, and whether a folder is a store at all (the errors and commands its messages
name are in :mod:`s2policy.data.store.errors`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr
import zarr.codecs
import zarr.errors

from s2policy.data.store.chunks import _WRITE_CONFIG, CHUNKS_ATTR
from s2policy.data.store.errors import _span, inspect_hint, repair_command

logger = logging.getLogger(__name__)

LAYOUT = "s2policy.replay_buffer"
LAYOUT_VERSION = 1
_RESERVED_ATTRS = ("layout", "layout_version")
#: The named points of a write (see :func:`s2policy.fileio.crash_point`).
CRASH_POINTS = (
    "store_create",
    "episode_data",
    "episode_meta",
    "episode_commit_resize",
    "episode_commit",
)


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
