import os
import sys

import pytest

from envs import rendering


def test_user_backend_is_respected(monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "osmesa")
    monkeypatch.setattr(rendering, "probe_backend", lambda b: pytest.fail("must not probe"))
    assert rendering.configure_gl_backend() == "osmesa"


def test_unknown_user_backend_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "vulkanish")
    with pytest.raises(RuntimeError, match="not a MuJoCo OpenGL backend.*egl"):
        rendering.configure_gl_backend()


def test_first_working_candidate_is_chosen(monkeypatch):
    monkeypatch.delenv("MUJOCO_GL")
    monkeypatch.delenv("PYOPENGL_PLATFORM", raising=False)
    monkeypatch.delitem(sys.modules, "mujoco")
    tried = []

    def probe(backend):
        tried.append(backend)
        return backend == "osmesa", "no display"

    monkeypatch.setattr(rendering, "probe_backend", probe)
    assert rendering.configure_gl_backend() == "osmesa"
    assert tried == ["egl", "osmesa"]
    assert os.environ["MUJOCO_GL"] == "osmesa" and os.environ["PYOPENGL_PLATFORM"] == "osmesa"


def test_no_working_backend_names_the_fix(monkeypatch):
    monkeypatch.delenv("MUJOCO_GL")
    monkeypatch.delitem(sys.modules, "mujoco")
    monkeypatch.setattr(rendering, "probe_backend", lambda b: (False, "eglInitialize failed"))
    with pytest.raises(RuntimeError, match=r"eglInitialize failed.*apt-get install -y libegl1"):
        rendering.configure_gl_backend()


def test_non_strict_failure_disables_rendering_and_render_raises(monkeypatch):
    monkeypatch.delenv("MUJOCO_GL")
    monkeypatch.delenv(rendering.ERROR_VAR, raising=False)
    monkeypatch.delitem(sys.modules, "mujoco")
    monkeypatch.setattr(rendering, "probe_backend", lambda b: (False, "no EGL"))
    assert rendering.configure_gl_backend(strict=False) == "disable"
    with pytest.raises(RuntimeError, match="no EGL.*apt-get"):
        rendering.require_rendering()


def test_mujoco_imported_first_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("MUJOCO_GL")
    with pytest.raises(RuntimeError, match="import envs before mujoco"):
        rendering.configure_gl_backend()


def test_this_machine_renders_with_the_chosen_backend():
    backend = os.environ["MUJOCO_GL"]
    assert backend not in rendering.DISABLED, os.environ.get(rendering.ERROR_VAR)
    works, error = rendering.probe_backend(backend)
    assert works, error
