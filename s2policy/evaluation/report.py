"""Success table per task x backbone x scales x policy, and a success-vs-GFLOPs plot.

    python -m s2policy.evaluation.report multirun/cube_pick outputs/cube_pick --out reports/cube

Each argument is a ``results.json`` or a folder searched for ``**/eval/results.json``. Episodes
are pooled over training seeds (Wilson 95 % interval on the pooled count); the seeds' own rates
are listed to show their spread.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from s2policy.evaluation.stats import success_rate

COLUMNS = ["task", "backbone", "scales", "weights", "params_M", "gflops_per_img", "encoder_ms",
           "probe_object_r2", "probe_gripper_r2", "policy", "success", "ci95_low", "ci95_high",
           "episodes", "seeds", "seed_rates"]  # fmt: skip


def find_results(paths: list[str | Path]) -> list[Path]:
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            found += sorted(p.rglob("eval/results.json")) or sorted(p.rglob("results.json"))
        else:
            raise FileNotFoundError(f"{p} is neither a results.json nor a folder")
    if not found:
        raise FileNotFoundError(f"no results.json under {', '.join(map(str, paths))}")
    return found


def build_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, backbone, scales, policy); episodes pooled over training seeds."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        enc = r["encoder"]
        key = (r["task"], enc["backbone"], tuple(enc["scales"]), enc.get("weights"), r["policy"])
        groups[key].append(r)
    rows = []
    for (task, backbone, scales, weights, policy), runs in sorted(groups.items(), key=str):
        wins = sum(r["successes"] for r in runs)
        n = sum(r["n_episodes"] for r in runs)
        rate = success_rate(wins, n)
        enc_ms = [r["latency"].get("encoder_ms", {}).get("mean") for r in runs]
        enc_ms = [v for v in enc_ms if v is not None]
        by_seed = sorted((r.get("train_seed", 0), r["success_rate"]) for r in runs)
        probes = [r["probe"] for r in runs if r.get("probe")]

        def probe_mean(key, probes=probes):
            values = [p[key] for p in probes if key in p]
            return float(np.mean(values)) if values else None

        rows.append(
            {
                "task": task,
                "backbone": "blind (state only)" if backbone == "none" else backbone,
                "scales": "-" if backbone == "none" else "(" + ", ".join(map(str, scales)) + ")",
                "weights": "-" if backbone == "none" else (weights or "random"),
                "params_M": runs[0]["encoder"]["params"] / 1e6,
                "gflops_per_img": runs[0]["encoder"]["gflops_per_image"],
                "encoder_ms": float(np.mean(enc_ms)) if enc_ms else 0.0,
                "probe_object_r2": probe_mean("object_pos"),
                "probe_gripper_r2": probe_mean("gripper"),
                "policy": policy,
                "success": rate.rate,
                "ci95_low": rate.low,
                "ci95_high": rate.high,
                "episodes": n,
                "seeds": len(runs),
                "seed_rates": " ".join(f"s{s}:{100 * v:.0f}%" for s, v in by_seed),
            }
        )
    return rows


def to_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| task | backbone | scales | weights | params (M) | GFLOPs/img | encoder ms/call | "
        "probe R² object | probe R² gripper | policy | success [95% CI] | episodes | "
        "seeds (per-seed success) |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | --- |",
    ]

    def r2(v):
        return "-" if v is None else f"{v:.3f}"

    for r in rows:
        lines.append(
            f"| {r['task']} | {r['backbone']} | {r['scales']} | {r['weights']} | "
            f"{r['params_M']:.2f} | {r['gflops_per_img']:.3f} | {r['encoder_ms']:.1f} | "
            f"{r2(r['probe_object_r2'])} | {r2(r['probe_gripper_r2'])} | {r['policy']} | "
            f"{100 * r['success']:.1f}% [{100 * r['ci95_low']:.1f}, {100 * r['ci95_high']:.1f}] | "
            f"{r['episodes']} | {r['seeds']} ({r['seed_rates']}) |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=120)
    for r in rows:
        y = 100 * r["success"]
        err = [[max(0.0, y - 100 * r["ci95_low"])], [max(0.0, 100 * r["ci95_high"] - y)]]
        weights = "" if r["weights"] in ("-", "random") else f" {r['weights']}"
        label = f"{r['backbone']} {r['scales']}{weights} {r['policy']}".replace(" -", "")
        ax.errorbar(r["gflops_per_img"], y, yerr=err, fmt="o", capsize=4, label=label)
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlabel("encoder GFLOPs per image (symlog; blind = 0)")
    ax.set_ylabel("success rate (%) with 95% interval")
    ax.set_ylim(-3, 103)
    tasks = sorted({r["task"] for r in rows})
    ax.set_title(f"success vs encoder cost: {', '.join(tasks)}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(paths: list[str | Path], out: str | Path) -> tuple[str, list[Path]]:
    """Read results, write ``report.md``, ``report.csv`` and ``success_vs_gflops.png`` to ``out``
    (one table per task); returns the markdown and the written files."""
    files = find_results(paths)
    results = [json.loads(f.read_text()) for f in files]
    rows = build_rows(results)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md = ""
    for task in sorted({r["task"] for r in rows}):
        md += f"### {task}\n\n" + to_markdown([r for r in rows if r["task"] == task]) + "\n"
    (out / "report.md").write_text(md)
    with (out / "report.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    png = plot(rows, out / "success_vs_gflops.png")
    return md, [out / "report.md", out / "report.csv", png]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="success table and plot from evaluation results")
    parser.add_argument("runs", nargs="+", help="results.json files or folders to search")
    parser.add_argument("--out", default=None, help="output folder (default: <first run>/report)")
    args = parser.parse_args(argv)
    first = Path(args.runs[0])
    out = args.out or (first.parent if first.is_file() else first) / "report"
    md, written = write_report(args.runs, out)
    print(md)
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
