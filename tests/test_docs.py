"""The docs stay true: the site builds with ``mkdocs build --strict`` (broken links, nav entries
and anchors fail), the generated pages (configuration reference, results tables) match their
sources, and every command in the docs' code blocks composes into its typed config (keys and
values checked, nothing run)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from s2policy.configs import CONFIG_DIR, register_configs, to_object
from s2policy.hydra_app import check_choices

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

#: Our scripts and modules -> the hydra config they compose.
SCRIPTS = {
    "collect_demos.py": "collect",
    "cache_features.py": "cache",
    "train_policy.py": "config",
    "eval_rollouts.py": "eval",
    "pretrain_mae.py": "pretrain",
    "s2policy.evaluation.report": "report",
    "s2policy.evaluation.probe": "probe",
    "s2policy.evaluation.approx": "approx",
    "s2policy.evaluation.offline": "offline",
    "s2policy.evaluation.publish": "publish",
    "s2policy.robot.run": "robot",
    "s2policy.robot.keys": "robot_keys",
    "s2policy.data.formats.robomimic": "robomimic",
    "s2policy.data.formats.lerobot.convert": "lerobot",
    "s2policy.data.store": "store",
    "s2policy.viz": "viz",
}
CONSOLE = {
    "s2policy-collect": "collect", "s2policy-cache": "cache", "s2policy-train": "config",
    "s2policy-eval": "eval", "s2policy-pretrain": "pretrain", "s2policy-report": "report",
    "s2policy-probe": "probe", "s2policy-approx": "approx", "s2policy-offline": "offline",
    "s2policy-robot": "robot", "s2policy-robot-keys": "robot_keys", "s2policy-store": "store",
    "s2policy-robomimic": "robomimic", "s2policy-lerobot": "lerobot", "s2policy-viz": "viz",
    "s2policy-publish": "publish",
}  # fmt: skip
#: What stands for a value the reader fills in.
PLACEHOLDER = re.compile(r"<[^>]+>|\.\.\.|…")


def code_blocks(text: str) -> list[str]:
    return re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, re.S)


def commands(block: str) -> list[str]:
    """The block's command lines, continuations joined, shell variables of the block filled."""
    joined = re.sub(r"\\\n\s*", " ", block)
    variables: dict[str, str] = {}
    out = []
    for line in joined.splitlines():
        line = line.split(" #")[0].strip()
        loop = re.match(r"for (\w+) in (\S+)[^;]*; do\s*(.*)", line)
        if loop:  # a loop's variable: its first value
            variables[loop.group(1)] = loop.group(2)
            line = loop.group(3)
        line = re.sub(r";\s*done$", "", line).strip()
        m = re.fullmatch(r'(\w+)="?([^"]*)"?', line)
        if m and not line.startswith(("python", "s2policy")):
            variables[m.group(1)] = m.group(2)
            continue
        for name, value in variables.items():
            line = line.replace(f"${{{name}}}", value).replace(f"${name}", value)
        out.append(line)
    return out


def documented_commands() -> list[tuple[str, str]]:
    """``(where, command)`` of every command of ours in the docs' code blocks."""
    found = []
    for path in DOC_FILES:
        for block in code_blocks(path.read_text()):
            for line in commands(block):
                words = line.split()
                if not words:
                    continue
                if words[0] == "torchrun":
                    words = [w for w in words[1:] if not w.startswith("--")]
                    words = ["python", *words]
                if words[0] in CONSOLE or (
                    words[0].endswith("python") and len(words) > 1
                    and (words[1] in SCRIPTS or words[1:2] == ["-m"] and words[2] in SCRIPTS)
                ):  # fmt: skip
                    found.append((str(path.relative_to(ROOT)), line))
    return found


def overrides_of(line: str) -> tuple[str, list[str]]:
    """The config name and the hydra overrides of a documented command (a sweep's first value,
    placeholders filled with a value of the right kind)."""
    # [a=1 | b=2]: alternatives, the first
    line = re.sub(r"\[(\w[\w.]*=[^\s|\]]*)\s*\|[^\]]*\]", r"\1", line)
    words = shlex.split(line, comments=False)
    if words[0] == "torchrun":
        words = ["python", *[w for w in words[1:] if not w.startswith("--")]]
    if words[0] in CONSOLE:
        name, args = CONSOLE[words[0]], words[1:]
    elif words[1] == "-m":
        name, args = SCRIPTS[words[2]], words[3:]
    else:
        name, args = SCRIPTS[words[1]], words[2:]
    out = []
    for arg in args:
        if re.match(r"\[\w[\w.@/]*=", arg) and arg.endswith("]"):  # [key=value]: optional
            arg = arg[1:-1]
        if arg in ("-m", "--multirun") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        if "|" in value and not value.startswith("["):  # alternatives: the first
            value = value.split("|")[0]
        value = PLACEHOLDER.sub("x", value)
        if not value.startswith("[") and "," in value:  # a sweep: its first value
            value = value.split(",")[0]
        out.append(f"{key}={value}")
    return name, out


COMMANDS = documented_commands()


def test_the_docs_hold_commands_of_every_kind():
    kinds = {overrides_of(line)[0] for _, line in COMMANDS}
    assert {"collect", "cache", "config", "eval", "report", "robot", "lerobot"} <= kinds


@pytest.mark.parametrize(("where", "line"), COMMANDS, ids=[f"{w}:{c[:60]}" for w, c in COMMANDS])
def test_every_documented_command_composes_into_its_typed_config(where, line):
    name, overrides = overrides_of(line)
    register_configs()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        try:
            cfg = compose(name, overrides, return_hydra_config=True)
        except Exception as err:  # noqa: BLE001  (hydra's parse and composition errors)
            pytest.fail(f"{where}: `{line}` does not compose: {err}")
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = "/run/output"  # what a real run sets
        HydraConfig.instance().set_config(cfg)  # ${hydra:...} (run names) resolve as in a run
        with open_dict(cfg):
            del cfg["hydra"]
        try:
            check_choices()
            to_object(cfg)
        except Exception as err:  # noqa: BLE001
            pytest.fail(f"{where}: `{line}` is not a valid {name} config: {err}")


def test_the_configuration_reference_is_current():
    from s2policy.configdoc import PAGE, render

    assert PAGE.read_text() == render(), "run python -m s2policy.configdoc"


def test_the_results_tables_match_their_records():
    from s2policy.evaluation.publish import stale_pages

    assert not stale_pages(), "run python -m s2policy.evaluation.publish"


def test_the_site_builds_strict(tmp_path):
    mkdocs = Path(sys.executable).parent / "mkdocs"
    if not mkdocs.is_file() and shutil.which("mkdocs") is None:
        pytest.fail("mkdocs is missing: pip install -e '.[dev]' installs mkdocs-material")
    exe = str(mkdocs) if mkdocs.is_file() else shutil.which("mkdocs")
    proc = subprocess.run(
        [exe, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
