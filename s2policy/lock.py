"""The locked environment: ``requirements.lock`` pins every package ``make setup`` installs.

``make lock`` (``python -m s2policy.lock``) resolves ``pyproject.toml``'s dependencies with the
extras ``make setup`` installs, with pip's own resolver (``pip install --dry-run --report``), and
writes one ``name==version`` line per package, after a header with the digest of the
dependency lists it was resolved from. ``make setup`` installs with ``-c requirements.lock``, so
two fresh clones install the same versions; ``tests/test_lock.py`` fails when ``pyproject.toml``
changed and the lock was not refreshed, or when the environment differs from the lock.

``python -m s2policy.lock --keep-installed`` pins the versions installed in the current
environment (the ones the tests last passed with) for every package it already has, and resolves
only the rest; a change of pyproject.toml that needs another version of an installed package
fails to resolve that way: run it without ``--keep-installed``.

The lock is for the machines the project runs on (CPython 3.11, Linux x86_64): pip resolves for
the interpreter and platform it runs on.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
PYPROJECT = ROOT / "pyproject.toml"
#: The extras ``make setup`` installs (the Makefile passes the same list).
EXTRAS = ("dev", "robomimic", "viz", "lerobot")
#: The header's fields (``# <field>: <value>`` lines before the pins).
DIGEST, TARGET, EXTRAS_FIELD = "pyproject digest", "target", "extras"
#: The virtualenv's own tools: not pinned (``pip freeze`` leaves them out too).
TOOLING = ("pip", "setuptools", "wheel")


def requirements(pyproject: Path = PYPROJECT, extras: tuple[str, ...] = EXTRAS) -> list[str]:
    """The project's requirement strings: its dependencies and those of ``extras``."""
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise ValueError(f"{pyproject} has no extras {unknown}; it has {sorted(optional)}")
    return [*project.get("dependencies", []), *(r for e in extras for r in optional[e])]


def digest(pyproject: Path = PYPROJECT, extras: tuple[str, ...] = EXTRAS) -> str:
    """A digest of what the lock was resolved from: the requirement strings and the extras."""
    text = json.dumps({"requirements": requirements(pyproject, extras), "extras": list(extras)})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_lock(path: Path = LOCK) -> tuple[dict[str, str], dict[str, str]]:
    """``({header field: value}, {normalized name: version})`` of a lock file: the header's
    fields are :data:`DIGEST`, :data:`TARGET` and :data:`EXTRAS_FIELD`."""
    if not path.is_file():
        raise FileNotFoundError(f"no lock file {path}: run `make lock`")
    header, pins = {}, {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        field, colon, value = line.removeprefix("# ").partition(": ")
        if line.startswith("# ") and colon and field in (DIGEST, TARGET, EXTRAS_FIELD):
            header[field] = value.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        if not sep or not version:
            raise ValueError(f"{path}:{n}: expected name==version, got {line!r}: run `make lock`")
        pins[normalize(name)] = version.strip()
    return header, pins


def normalize(name: str) -> str:
    """PEP 503's normalized project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def target() -> str:
    """The interpreter and platform a lock made here is for: ``cpython-3.11-linux-x86_64``."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    return f"{sys.implementation.name}-{version}-{sys.platform}-{platform.machine()}"


def resolve(keep_installed: bool = False) -> dict[str, str]:
    """``{name: version}`` that pip resolves for the project with :data:`EXTRAS` (nothing is
    installed)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed"]
        cmd += ["--report", str(report)]
        if keep_installed:
            frozen = subprocess.run(
                [sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            constraints = Path(tmp) / "installed.txt"
            constraints.write_text(frozen)
            cmd += ["-c", str(constraints)]
        cmd += ["-e", f"{ROOT}[{','.join(EXTRAS)}]"]
        env = {**os.environ, "CMAKE_POLICY_VERSION_MINIMUM": "3.5"}  # robomimic's egl_probe
        subprocess.run(cmd, check=True, env=env)
        installs = json.loads(report.read_text())["install"]
    own = normalize(tomllib.loads(PYPROJECT.read_text())["project"]["name"])
    pins = {normalize(i["metadata"]["name"]): i["metadata"]["version"] for i in installs}
    for name in (own, *TOOLING):
        pins.pop(name, None)
    return dict(sorted(pins.items()))


def write_lock(pins: dict[str, str], path: Path = LOCK) -> None:
    header = [
        "# The environment `make setup` installs (pip install -c requirements.lock).",
        "# Generated by `make lock` (python -m s2policy.lock); do not edit.",
        f"# {EXTRAS_FIELD}: {','.join(EXTRAS)}",
        f"# {TARGET}: {target()}",
        f"# {DIGEST}: {digest()}",
    ]
    path.write_text("\n".join([*header, *(f"{n}=={v}" for n, v in pins.items())]) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--keep-installed",
        action="store_true",
        help="pin the versions installed in this environment (resolve only the others)",
    )
    args = parser.parse_args(argv)
    pins = resolve(args.keep_installed)
    write_lock(pins)
    print(f"wrote {LOCK} ({len(pins)} packages, digest {digest()})")


if __name__ == "__main__":
    main()
