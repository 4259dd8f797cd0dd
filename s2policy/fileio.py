"""Writing directories so that a crash never leaves a mixture: a directory is written in full
under ``<name>.new`` and swapped in by renames (policy checkpoints, MAE checkpoints)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

#: Environment variable naming a crash point, ``name`` or ``name@N`` (its N-th time): crash tests
#: kill a process there, as a power cut would.
CRASH_ENV = "S2POLICY_CRASH_AT"
_crash_hits: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Die at once (no clean-up, exit status 137 as after SIGKILL) when ``$S2POLICY_CRASH_AT``
    names this point (``name@N``: the N-th time it is reached). The points: collection's
    ``store_create``, ``episode_data``, ``episode_meta``, ``episode_commit``
    (:mod:`s2policy.data.replay_buffer`); caching's ``cache.create``, ``cache.chunk``,
    ``cache.done`` (:mod:`s2policy.features.cache`); a checkpoint's ``swap:checkpoint``
    (:func:`swap_in`)."""
    target = os.environ.get(CRASH_ENV)
    if not target:
        return
    want, _, nth = target.partition("@")
    if want != name:
        return
    _crash_hits[name] = _crash_hits.get(name, 0) + 1
    if _crash_hits[name] >= int(nth or 1):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(137)


def swap_in(new: Path, final: Path) -> Path:
    """Replace directory ``final`` by the fully written ``new`` with renames: ``final`` moves to
    ``<final>.old`` first, so a crash leaves either the previous or the new directory whole."""
    old = final.with_name(final.name + ".old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        crash_point(f"swap:{final.name}")  # the old one aside, the new one not yet in place
    new.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final
