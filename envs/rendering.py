"""Headless OpenGL backend selection for MuJoCo.

MuJoCo binds its OpenGL backend when ``mujoco`` is first imported, from the ``MUJOCO_GL``
environment variable. :func:`configure_gl_backend` must therefore run before that import;
``envs/__init__.py`` calls it first thing, so ``import envs`` is enough.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

logger = logging.getLogger(__name__)

#: Backends tried in order when the user did not set ``MUJOCO_GL``. EGL uses the NVIDIA driver on
#: a GPU machine and Mesa's software rasterizer (llvmpipe) on a CPU machine; OSMesa is the fallback.
CANDIDATES = ("egl", "osmesa")
KNOWN = ("egl", "osmesa", "glfw", "glx")

FIX = (
    "install the headless rendering libraries with "
    "'apt-get install -y libegl1 libegl-mesa0 libgl1-mesa-dri' (or 'libosmesa6' and "
    "MUJOCO_GL=osmesa), or set MUJOCO_GL to a backend that works on this machine"
)

_PROBE = """
from mujoco.gl_context import GLContext
ctx = GLContext(16, 16)
ctx.make_current()
ctx.free()
"""


def probe_backend(backend: str, timeout: float = 60.0) -> tuple[bool, str]:
    """Try to create a 16x16 offscreen context with ``backend`` in a fresh interpreter.

    Returns ``(works, error_text)``. A subprocess is needed because MuJoCo fixes its backend at
    import time, and a failed backend may leave the process in a state that cannot be undone.
    """
    env = {**os.environ, "MUJOCO_GL": backend}
    if backend in ("egl", "osmesa"):
        env["PYOPENGL_PLATFORM"] = backend
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout:.0f} s"
    if proc.returncode == 0:
        return True, ""
    lines = proc.stderr.strip().splitlines()
    return False, lines[-1] if lines else f"exit code {proc.returncode}"


DISABLED = ("disable", "disabled", "off", "false", "0")
#: Set in the environment when no backend worked at import, so that rendering fails with the reason.
ERROR_VAR = "S2POLICY_GL_ERROR"


def configure_gl_backend(candidates: tuple[str, ...] = CANDIDATES, strict: bool = True) -> str:
    """Choose MuJoCo's OpenGL backend for offscreen rendering and return its name.

    A ``MUJOCO_GL`` set by the user is respected as is (after checking it is a known name).
    Otherwise the first backend in ``candidates`` that can create a context is chosen and written
    to ``MUJOCO_GL`` (and ``PYOPENGL_PLATFORM``) so that MuJoCo and child processes use it.

    With ``strict=False`` a failure is logged instead of raised and rendering is disabled
    (``MUJOCO_GL=disable``), so state-only environments still work and the first render raises
    the same message through :func:`require_rendering`.

    Raises:
        RuntimeError: no candidate works, or ``mujoco`` was imported before a backend was chosen.
    """
    try:
        return _choose_backend(candidates)
    except RuntimeError as err:
        if strict:
            raise
        logger.warning("%s", err)
        os.environ["MUJOCO_GL"] = "disable"
        os.environ[ERROR_VAR] = str(err)
        return "disable"


def require_rendering() -> None:
    """Raise the backend error (with its fix) when offscreen rendering is unavailable."""
    if os.environ.get("MUJOCO_GL", "").strip().lower() in DISABLED:
        raise RuntimeError(
            os.environ.get(ERROR_VAR)
            or f"MuJoCo rendering is disabled (MUJOCO_GL=disable); unset MUJOCO_GL or {FIX}."
        )


def _choose_backend(candidates: tuple[str, ...]) -> str:
    user = os.environ.get("MUJOCO_GL", "").strip().lower()
    if user:
        if user not in KNOWN and user not in DISABLED:
            raise RuntimeError(
                f"MUJOCO_GL={user!r} is not a MuJoCo OpenGL backend; use one of {', '.join(KNOWN)}"
            )
        if user in ("egl", "osmesa"):
            os.environ.setdefault("PYOPENGL_PLATFORM", user)
        return user
    if "mujoco" in sys.modules:
        raise RuntimeError(
            "mujoco was imported before s2policy chose an OpenGL backend, so it is bound to its "
            "default (GLFW, which needs a display); import envs before mujoco, or set MUJOCO_GL=egl"
        )
    errors = []
    for backend in candidates:
        works, error = probe_backend(backend)
        if works:
            os.environ["MUJOCO_GL"] = backend
            os.environ["PYOPENGL_PLATFORM"] = backend
            logger.info("MuJoCo OpenGL backend: %s", backend)
            return backend
        errors.append(f"{backend}: {error}")
    raise RuntimeError(
        f"No headless OpenGL backend works for MuJoCo ({'; '.join(errors)}); to fix it, {FIX}."
    )
