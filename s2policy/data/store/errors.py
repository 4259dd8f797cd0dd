"""The store's errors, and the inspect/repair commands its messages name."""

from __future__ import annotations

from pathlib import Path

from s2policy.fileio import LockedError

#: What a second writer of a store is told to do instead.
_ONE_WRITER = "one writer per store (readers may open it meanwhile)"
_RERUN = "rerun the same command: it continues after the last saved episode"
COMMAND = "python -m s2policy.data.store"


class CorruptStoreError(ValueError):
    """A store whose committed data or commit record is damaged (nothing was changed)."""


class StoreLockedError(LockedError, ValueError):
    """Another writer holds the store (nothing was changed)."""


def inspect_hint(path: Path | str) -> str:
    return f"inspect it with `{COMMAND} action=inspect store={path}`"


def repair_command(path: Path | str) -> str:
    return f"`{COMMAND} action=repair store={path} confirm=true`"


def _span(word: str, start: int, stop: int) -> str:
    """``episodes 3-5`` / ``episode 3`` for the half-open range ``[start, stop)``."""
    if stop - start == 1:
        return f"{word.rstrip('s')} {start}"
    return f"{word} {start}-{stop - 1}"
