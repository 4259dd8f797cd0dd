"""Published results as committed records, and the docs' tables rendered from them.

A record (``docs/results/data/<name>.json``) keeps what a published table needs — the report's
rows (counts, not percentages: every rate, interval and difference is computed here), the
commands that produced them, the commit and date — so that no figure is copied by hand:

    python -m s2policy.evaluation.publish action=record name=ladder runs=[multirun/ladder] \\
        tasks=[cube_pick,place] commands='["python train_policy.py -m experiment=ladder"]'
    python -m s2policy.evaluation.publish                 # re-render every page's tables
    python -m s2policy.evaluation.publish action=check    # fail when a page disagrees (make test)

A page marks each generated block::

    <!-- results: ladder view=success tasks=cube_pick,place -->
    ... (rendered; edits inside are overwritten) ...
    <!-- /results -->

Views: ``success`` (one row per configuration: success [95 % CI], per seed, episodes, probe R²),
``ladder`` (per task, single-scale rungs and S² with the differences), ``tasks`` (one row
per configuration, one column per task), ``sentences`` (the
report's sentences), ``demos`` (success by number of demonstrations), ``offline`` (offline
action error) and ``provenance`` (date, commit, commands).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RECORDS = ROOT / "docs" / "results" / "data"
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
#: The report-row fields a record keeps.
KEEP = (
    "task", "demos", "dataset", "backbone", "scales", "weights", "pool", "params_M",
    "gflops_per_img", "encoder_ms", "probe_object_r2", "probe_gripper_r2", "policy", "recipe",
    "execution", "randomization", "successes", "episodes", "seeds", "seed_rates", "eval_seeds",
    "approx_r2",
)  # fmt: skip
MARK = re.compile(r"<!-- results: (\S+)([^>]*)-->\n(.*?)<!-- /results -->", re.S)


# ---------------------------------------------------------------------- records
def make_record(
    name: str, runs: list[str], tasks: list[str] | None, commands: list[str], note: str = ""
) -> dict[str, Any]:
    """The record of the runs under ``runs`` (their ``results.json``) with their commands."""
    from s2policy.evaluation.report import build_rows, find_results, offline_rows
    from s2policy.fileio import read_json

    results = [read_json(f, "evaluation results.json", "rerun it") for f in find_results(runs)]
    if tasks:
        results = [r for r in results if r["task"] in tasks]
    rows = build_rows([r for r in results if r.get("kind") != "offline"])
    offline = offline_rows([r for r in results if r.get("kind") == "offline"])
    return {
        "name": name,
        "date": time.strftime("%Y-%m-%d"),
        "commit": _commit(),
        "commands": list(commands),
        "note": note,
        "rows": [{k: _plain(r.get(k)) for k in KEEP} for r in rows],
        "offline": [_plain(r) for r in offline],
    }


def _plain(value: Any) -> Any:
    """JSON-able: tuples to lists, numpy scalars to Python numbers."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def load_record(name: str) -> dict[str, Any]:
    from s2policy.fileio import read_json

    path = RECORDS / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in RECORDS.glob("*.json"))
        raise FileNotFoundError(f"no results record {path}; records: {known}")
    return read_json(path, "results record", "restore it from git")


# ---------------------------------------------------------------------- rows
def rows_of(record: dict[str, Any], tasks: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The record's rows with their rates and intervals (recomputed from the counts)."""
    from s2policy.evaluation.report import normalize, pareto
    from s2policy.evaluation.stats import success_rate

    rows = []
    for r in record["rows"]:
        if tasks and r["task"] not in tasks:
            continue
        rate = success_rate(r["successes"], r["episodes"])
        rows.append({**r, "success": rate.rate, "ci95_low": rate.low, "ci95_high": rate.high})
    return pareto(normalize(rows))


def _name(r: dict[str, Any]) -> str:
    if r["scales"] == "-":
        return r["backbone"]
    s2 = "S² " if "," in r["scales"] else ""
    return f"{s2}`{r['backbone']}` {r['scales']}"


def _rate(r: dict[str, Any]) -> str:
    return f"{100 * r['success']:.1f} % [{100 * r['ci95_low']:.1f}, {100 * r['ci95_high']:.1f}]"


def _r2(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


# ---------------------------------------------------------------------- views
def view_success(record: dict[str, Any], tasks: Sequence[str] | None = None, **_) -> str:
    """One row per configuration and task: success [95 % CI], normalized between the floor
    (blind) and the ceiling (oracle) of the same task and execution, per seed, probes."""
    rows = rows_of(record, tasks)
    lines = [
        "| task | encoder | weights | recipe | GFLOPs/img | probe R² object / gripper | "
        "success [95 % CI] | normalized | per seed | episodes |",
        "| --- | --- | --- | --- | ---: | --- | --- | ---: | --- | ---: |",
    ]
    for r in sorted(
        rows, key=lambda r: (r["task"], r["gflops_per_img"], r["backbone"], r["recipe"])
    ):
        probes = f"{_r2(r['probe_object_r2'])} / {_r2(r.get('probe_gripper_r2'))}"
        norm = r.get("normalized")
        norm = "–" if norm is None or norm != norm else f"{norm:.2f}"
        lines.append(
            f"| {r['task']} | {_name(r)} | {r['weights']} | {r['recipe']} | "
            f"{r['gflops_per_img']:.3f} | {probes} | {_rate(r)} | {norm} | {r['seed_rates']} | "
            f"{r['episodes']} |"
        )
    return "\n".join(lines)


def view_ladder(record: dict[str, Any], tasks: Sequence[str] | None = None, **_) -> str:
    """Per task (a row): each encoder's success [95 % CI] (per seed), cheapest first."""
    rows = [r for r in rows_of(record, tasks) if r["scales"] != "-"]
    order = sorted({(r["gflops_per_img"], _name(r)) for r in rows})
    names = [n for _, n in order]
    lines = ["| task | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    for task in tasks or sorted({r["task"] for r in rows}):
        by = {_name(r): r for r in rows if r["task"] == task}
        cells = [f"{_rate(by[n])} ({by[n]['seed_rates']})" if n in by else "–" for n in names]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    lines += ["", f"GFLOPs per image: {', '.join(f'{n} {g:.3f}' for g, n in order)}."]
    return "\n".join(lines)


def view_tasks(record: dict[str, Any], tasks: Sequence[str] | None = None, **_) -> str:
    """One row per configuration (encoder, weights, recipe), one column per task: success
    [95 % CI], with the episodes when a cell has fewer than the record's most common count."""
    rows = rows_of(record, tasks)
    tasks = list(tasks or sorted({r["task"] for r in rows}))
    counts = [r["episodes"] for r in rows]
    usual = max(set(counts), key=lambda c: (counts.count(c), c)) if counts else 0
    configs: dict[tuple, dict[str, dict[str, Any]]] = {}
    for r in rows:
        key = (r["gflops_per_img"], _name(r), r["weights"], r["recipe"])
        configs.setdefault(key, {})[r["task"]] = r

    def cell(r: dict[str, Any] | None) -> str:
        if r is None:
            return "–"
        return _rate(r) + (f" ({r['episodes']} episodes)" if r["episodes"] != usual else "")

    lines = [
        "| encoder | weights | recipe | " + " | ".join(tasks) + " |",
        "| --- | --- | --- |" + " --- |" * len(tasks),
    ]
    for (_, name, weights, recipe), by in sorted(configs.items(), key=lambda kv: kv[0]):
        cells = " | ".join(cell(by.get(t)) for t in tasks)
        lines.append(f"| {name} | {weights} | {recipe} | {cells} |")
    lines += ["", f"Cells: {usual} episodes unless marked."]
    return "\n".join(lines)


def view_sentences(record: dict[str, Any], tasks: Sequence[str] | None = None, **_) -> str:
    from s2policy.evaluation.ladder import (
        comparison_sentence,
        equal_flops_comparisons,
        own_scale_comparisons,
        own_scale_sentence,
    )

    rows = rows_of(record, tasks)
    own = [f"- {own_scale_sentence(c, rows)}" for c in own_scale_comparisons(rows)]
    flops = [f"- {comparison_sentence(c)}" for c in equal_flops_comparisons(rows)]
    return "\n".join(own + flops)


def view_demos(record: dict[str, Any], tasks: Sequence[str] | None = None, **_) -> str:
    from s2policy.evaluation.ladder import demos_table

    rows = rows_of(record, tasks)
    parts = []
    for task in sorted({r["task"] for r in rows}):
        table = demos_table(rows, task)
        if table:
            parts.append(f"**{task}**\n\n{table.rstrip()}")
    return "\n\n".join(parts)


def view_offline(record: dict[str, Any], tasks: Sequence[str] | None = None, **_) -> str:
    from s2policy.evaluation.report import offline_markdown

    rows = [dict(r) for r in record["offline"] if not tasks or r["task"] in tasks]
    for r in rows:
        for key in ("action_mse", "action_l1"):
            r[key] = tuple(float("nan") if v is None else v for v in r[key])
    return offline_markdown(rows).rstrip()


def view_provenance(record: dict[str, Any], **_) -> str:
    commands = "\n".join(record["commands"])
    note = f"\n\n{record['note']}" if record.get("note") else ""
    return (
        f"Measured {record['date']} at commit `{record['commit']}` (record "
        f"`docs/results/data/{record['name']}.json`):\n\n```bash\n{commands}\n```{note}"
    )


VIEWS = {
    "success": view_success,
    "ladder": view_ladder,
    "tasks": view_tasks,
    "sentences": view_sentences,
    "demos": view_demos,
    "offline": view_offline,
    "provenance": view_provenance,
}


# ---------------------------------------------------------------------- pages
def _options(text: str) -> dict[str, Any]:
    options = dict(kv.split("=", 1) for kv in text.split())
    if "tasks" in options:
        options["tasks"] = options["tasks"].split(",")
    return options


def render_page(text: str, where: str = "") -> str:
    """``text`` with every ``<!-- results: ... -->`` block rendered from its record."""

    def block(match: re.Match) -> str:
        name, options = match.group(1), _options(match.group(2))
        view = options.pop("view", "success")
        if view not in VIEWS:
            raise ValueError(f"{where}: unknown results view {view!r}; views: {list(VIEWS)}")
        body = VIEWS[view](load_record(name), **options)
        return f"<!-- results: {name}{match.group(2)}-->\n{body}\n<!-- /results -->"

    return MARK.sub(block, text)


def stale_pages(pages: Sequence[Path] = PAGES) -> list[Path]:
    return [p for p in pages if p.is_file() and render_page(p.read_text(), str(p)) != p.read_text()]


@dataclass
class PublishConfig:
    """``action=render`` (rewrite every page's blocks), ``check`` (fail when one is out of date)
    or ``record`` (write ``docs/results/data/<name>.json`` from ``runs``)."""

    action: str = "render"
    name: str | None = None
    runs: list[str] = field(default_factory=list)
    tasks: list[str] | None = None
    commands: list[str] = field(default_factory=list)
    note: str = ""

    def __post_init__(self):
        if self.action not in ("render", "check", "record"):
            raise ValueError(f"action must be render, check or record, got {self.action!r}")
        if self.action == "record" and (not self.name or not self.runs or not self.commands):
            raise ValueError("action=record needs name=..., runs=[...] and commands=[...]")


def run(cfg: PublishConfig) -> None:
    if cfg.action == "record":
        record = make_record(cfg.name, cfg.runs, cfg.tasks, cfg.commands, cfg.note)
        RECORDS.mkdir(parents=True, exist_ok=True)
        path = RECORDS / f"{cfg.name}.json"
        path.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {path} ({len(record['rows'])} rows, {len(record['offline'])} offline)")
        return
    stale = stale_pages()
    if cfg.action == "check":
        if stale:
            names = ", ".join(str(p.relative_to(ROOT)) for p in stale)
            print(f"results blocks out of date in {names}: run python -m "
                  "s2policy.evaluation.publish", file=sys.stderr)  # fmt: skip
            sys.exit(1)
        return
    for page in stale:
        page.write_text(render_page(page.read_text(), str(page)))
        print(f"rendered {page.relative_to(ROOT)}")


def main(argv: Sequence[str] | None = None) -> None:
    from s2policy.hydra_app import run_hydra, schemas

    run_hydra("publish", "publish", run, argv, schemas(publish_schema=PublishConfig))


if __name__ == "__main__":
    main()
