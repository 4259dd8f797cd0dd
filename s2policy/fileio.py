"""Writing directories so that a crash never leaves a mixture: a directory is written in full
under ``<name>.new`` and swapped in by renames (policy checkpoints, MAE checkpoints)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

#: Environment variable naming a crash point (tests kill a process there, as a power cut would).
CRASH_ENV = "S2POLICY_CRASH_AT"


def crash_point(name: str) -> None:
    """Die at once (no clean-up, exit status 137 as after SIGKILL) when ``$S2POLICY_CRASH_AT``
    names this point: the crash tests' hook for killing a write at a chosen step."""
    if os.environ.get(CRASH_ENV) == name:
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
