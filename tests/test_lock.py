"""requirements.lock: the environment `make setup` installs (s2policy.lock)."""

import importlib.metadata

import pytest
from packaging.requirements import Requirement

from s2policy import lock


def test_the_lock_was_made_from_this_pyproject():
    header, _ = lock.read_lock()
    assert header[lock.DIGEST] == lock.digest(), (
        "pyproject.toml's dependencies changed since requirements.lock was made: run `make lock`"
    )


def test_every_requirement_is_pinned_within_its_specifier():
    _, pins = lock.read_lock()
    bad = []
    for text in lock.requirements():
        req = Requirement(text)
        if req.marker and not req.marker.evaluate({"extra": ""}):
            continue
        version = pins.get(lock.normalize(req.name))
        if version is None or (req.specifier and version not in req.specifier):
            bad.append(f"{text} (locked: {version})")
    assert not bad, f"requirements.lock does not satisfy {bad}: run `make lock`"


def test_the_environment_is_the_locked_one():
    header, pins = lock.read_lock()
    if header.get(lock.TARGET) != lock.target():
        pytest.skip(f"the lock is for {header.get(lock.TARGET)}, this is {lock.target()}")
    differ = []
    for name, version in pins.items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            differ.append(f"{name} {installed} (locked {version})")
    assert not differ, f"the environment differs from requirements.lock: {differ}; run `make setup`"


def test_the_lock_was_made_for_the_extras_make_setup_installs():
    header, _ = lock.read_lock()
    assert header[lock.EXTRAS_FIELD] == ",".join(lock.EXTRAS)
    makefile = (lock.ROOT / "Makefile").read_text()
    extras = ",".join(lock.EXTRAS)
    assert f"-e '.[{extras}]'" in makefile, "the Makefile and s2policy.lock.EXTRAS differ"


def test_a_changed_pyproject_changes_the_digest(tmp_path):
    text = lock.PYPROJECT.read_text()
    (tmp_path / "a.toml").write_text(text)
    (tmp_path / "b.toml").write_text(text.replace('"einops', '"einops>=0.9,<9', 1))
    assert lock.digest(tmp_path / "a.toml") == lock.digest()
    assert lock.digest(tmp_path / "b.toml") != lock.digest()


@pytest.mark.parametrize(
    ("content", "error", "message"),
    [
        (None, FileNotFoundError, r"no lock file .*: run `make lock`"),
        ("torch>=2\n", ValueError, r":1: expected name==version, got 'torch>=2': run `make lock`"),
    ],
)
def test_a_bad_lock_is_one_sentence(tmp_path, content, error, message):
    path = tmp_path / "requirements.lock"
    if content is not None:
        path.write_text(content)
    with pytest.raises(error, match=message):
        lock.read_lock(path)


def test_unknown_extras_are_refused():
    with pytest.raises(ValueError, match=r"has no extras \['gpu'\]"):
        lock.requirements(extras=("gpu",))
