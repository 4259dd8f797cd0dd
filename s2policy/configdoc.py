"""The configuration reference of the docs (``docs/reference/configuration.md``), generated from
the typed dataclasses every command is checked against: each field's name, type, default and the
``#:`` comment above it in the source.

    python -m s2policy.configdoc            # rewrites docs/reference/configuration.md
    python -m s2policy.configdoc --check    # fails when the page is out of date (make test)
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import sys
import textwrap
import typing
from pathlib import Path
from typing import Any

PAGE = Path(__file__).resolve().parents[1] / "docs" / "reference" / "configuration.md"


def _commands() -> list[tuple[str, str, type]]:
    """(command, its ``configs/<name>.yaml``, the dataclass that checks it)."""
    from s2policy.data.collect import CollectConfig
    from s2policy.data.formats.lerobot.convert import LeRobotConfig
    from s2policy.data.formats.robomimic import RobomimicConfig
    from s2policy.data.store import StoreConfig
    from s2policy.evaluation.approx import ApproxConfig
    from s2policy.evaluation.config import EvalConfig
    from s2policy.evaluation.offline import OfflineConfig
    from s2policy.evaluation.probe import ProbeConfig
    from s2policy.evaluation.report import ReportConfig
    from s2policy.features.command import CacheCommandConfig
    from s2policy.pretraining.train import PretrainConfig
    from s2policy.robot.keys import RobotKeysConfig
    from s2policy.robot.run import RobotRunConfig
    from s2policy.training.config import RunConfig
    from s2policy.viz import VizConfig

    return [
        ("python collect_demos.py", "collect", CollectConfig),
        ("python cache_features.py", "cache", CacheCommandConfig),
        ("python train_policy.py", "config", RunConfig),
        ("python eval_rollouts.py", "eval", EvalConfig),
        ("python -m s2policy.evaluation.offline", "offline", OfflineConfig),
        ("python pretrain_mae.py", "pretrain", PretrainConfig),
        ("python -m s2policy.evaluation.report", "report", ReportConfig),
        ("python -m s2policy.evaluation.probe", "probe", ProbeConfig),
        ("python -m s2policy.evaluation.approx", "approx", ApproxConfig),
        ("python -m s2policy.robot.run", "robot", RobotRunConfig),
        ("python -m s2policy.robot.keys", "robot_keys", RobotKeysConfig),
        ("python -m s2policy.data.formats.robomimic", "robomimic", RobomimicConfig),
        ("python -m s2policy.data.formats.lerobot.convert", "lerobot", LeRobotConfig),
        ("python -m s2policy.data.store", "store", StoreConfig),
        ("python -m s2policy.viz", "viz", VizConfig),
    ]


def field_comments(cls: type) -> dict[str, str]:
    """Field -> the ``#:`` comment lines right above it in the class's source."""
    source = textwrap.dedent(inspect.getsource(cls))
    lines = source.splitlines()
    tree = ast.parse(source)
    out = {}
    for node in tree.body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            comment, row = [], node.lineno - 2
            while row >= 0 and lines[row].strip().startswith("#:"):
                comment.insert(0, lines[row].strip()[2:].strip())
                row -= 1
            out[node.target.id] = " ".join(comment)
    return out


def _type_name(kind: Any) -> str:
    if isinstance(kind, str):
        return kind
    return (
        getattr(kind, "__name__", None)
        if typing.get_origin(kind) is None and hasattr(kind, "__name__")
        else str(kind)
    ).replace("typing.", "")


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        if dataclasses.is_dataclass(value):
            return f"(`{type(value).__name__}`)"
    else:
        return "required"
    if isinstance(value, str) and value == "???":
        return "required"
    return f"`{value!r}`".replace("|", "\\|")


def _nested(kind: Any) -> type | None:
    """The config dataclass a field holds (itself, or inside ``X | None``), if any."""
    inner = [a for a in (kind, *typing.get_args(kind)) if dataclasses.is_dataclass(a)]
    return inner[0] if inner else None


def _table(cls: type, prefix: str, shared: list[type]) -> list[str]:
    """Rows of ``cls``'s fields; the config dataclasses it holds join ``shared`` (rendered once,
    at the end, and linked)."""
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    rows = []
    for f in dataclasses.fields(cls):
        kind = hints.get(f.name, f.type)
        text = comments.get(f.name, "").replace("|", "\\|")
        inner = _nested(kind)
        shown = f"[`{inner.__name__}`](#{inner.__name__.lower()})" if inner else (
            f"`{_type_name(kind)}`".replace("|", "\\|"))  # fmt: skip
        if inner is not None and inner not in shared:
            shared.append(inner)
        default = "(its defaults)" if inner is not None and _default(f).startswith("(") else (
            _default(f))  # fmt: skip
        rows.append(f"| `{prefix}{f.name}` | {shown} | {default} | {text} |".replace(
            "`None`", "null"))  # fmt: skip
    return ["| field | type | default | what |", "| --- | --- | --- | --- |", *rows, ""]


def _first_paragraph(cls: type) -> str:
    return (inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " ")


def render() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated by `python -m s2policy.configdoc` from the typed dataclasses that check every "
        "command's config (a misspelt key or a bad value fails at start); `make test` fails "
        "when this page is out of date. Override any field on the command line "
        "(`key=value`, lists `key=[a,b]`, nested fields `task.env.image_size=[64,64]`); the YAML "
        "in `configs/` only picks and overrides. Config groups (`encoder=`, `policy=`, `task=`, "
        "`train=`, `experiment=`, `randomization=`, `logger=`) pick files of "
        "`configs/<group>/`.",
        "",
    ]
    shared: list[type] = []
    for command, name, cls in _commands():
        lines += [f"## `{command}`", "", f"`configs/{name}.yaml`, "
                  f"`{cls.__module__}.{cls.__name__}`: {_first_paragraph(cls)}", ""]  # fmt: skip
        lines += _table(cls, "", shared)
    from s2policy.policies.diffusion import DiffusionPolicyConfig
    from s2policy.policies.mlp import MLPPolicyConfig

    lines += ["## Policies (`policy=mlp`, `policy=diffusion`)", ""]
    for cls in (MLPPolicyConfig, DiffusionPolicyConfig):
        lines += [f"### `{cls.__name__}`", "", _first_paragraph(cls), ""]
        lines += _table(cls, "policy.", shared)
    lines += ["## Configs inside configs", ""]
    done = 0
    while done < len(shared):  # a shared config may hold more of them
        cls = shared[done]
        done += 1
        lines += [f"### {cls.__name__}", "", f"`{cls.__module__}.{cls.__name__}`: "
                  f"{_first_paragraph(cls)}", ""]  # fmt: skip
        lines += _table(cls, "", shared)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    text = render()
    if "--check" in argv:
        if not PAGE.is_file() or PAGE.read_text() != text:
            print(f"{PAGE} is out of date: run python -m s2policy.configdoc", file=sys.stderr)
            sys.exit(1)
        return
    PAGE.parent.mkdir(parents=True, exist_ok=True)
    PAGE.write_text(text)
    print(f"wrote {PAGE}")


if __name__ == "__main__":
    main()
