"""Writing directories so that a crash never leaves a mixture: a directory is written in full
under ``<name>.new`` and swapped in by renames (policy checkpoints, MAE checkpoints)."""

from __future__ import annotations

import shutil
from pathlib import Path


def swap_in(new: Path, final: Path) -> Path:
    """Replace directory ``final`` by the fully written ``new`` with renames: ``final`` moves to
    ``<final>.old`` first, so a crash leaves either the previous or the new directory whole."""
    old = final.with_name(final.name + ".old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    new.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final
