"""The paper's question asked of report rows: S² on a small backbone against the single-scale
larger backbone of equal FLOPs (:func:`equal_flops_comparisons`), only meaningful when the larger
model is the better one at single scale — the regime of the paper's claim, checked for every
comparison (:func:`regime`) — and success against the number of demonstrations
(:func:`demos_table`, :func:`plot_demos`).

Every difference is Newcombe's interval of two independent rates (episodes pooled over training
seeds taken as independent, so seeds that disagree widen it less than they should; the rows list
each seed's rate)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from s2policy.evaluation.stats import difference_interval

BLIND_LABEL, ORACLE_LABEL = "blind (state only)", "oracle (privileged state)"
#: What two rows must share to be compared as S² vs single scale (encoder aside).
COMPARE_KEYS = ("task", "dataset", "demos", "policy", "recipe", "randomization")
#: Two encoders cost "equal FLOPs" when their GFLOPs per image differ by at most this factor.
EQUAL_FLOPS_TOLERANCE = 1.25
#: What a row of the data-efficiency table is (the demonstrations aside).
DEMOS_KEYS = ("backbone", "scales", "weights", "policy", "recipe", "randomization")


def is_s2(row: dict[str, Any]) -> bool:
    return "," in row["scales"]


def _trained_alike(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return (a["weights"] == "random") == (b["weights"] == "random")


def equal_flops_comparisons(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each S² row against the single-scale row of another backbone closest in GFLOPs per image
    (within :data:`EQUAL_FLOPS_TOLERANCE`), on the same task, data, policy and recipe, both with
    pretrained or both with random weights: the paper's question. ``difference`` = S² rate -
    single-scale rate with its Newcombe interval; ``regime``: :func:`regime` of the pair."""
    out = []
    for r in (r for r in rows if is_s2(r)):
        peers = [
            o
            for o in rows
            if o["backbone"] not in (BLIND_LABEL, ORACLE_LABEL, r["backbone"])
            and not is_s2(o)
            and all(o[k] == r[k] for k in COMPARE_KEYS)
            and _trained_alike(o, r)
            and o["gflops_per_img"] > 0
            and max(o["gflops_per_img"], r["gflops_per_img"])
            <= EQUAL_FLOPS_TOLERANCE * min(o["gflops_per_img"], r["gflops_per_img"])
        ]
        if not peers:
            continue
        o = min(peers, key=lambda o: abs(np.log(o["gflops_per_img"] / r["gflops_per_img"])))
        diff, low, high = difference_interval(
            r["successes"], r["episodes"], o["successes"], o["episodes"]
        )
        out.append(
            {
                "s2": r,
                "single": o,
                "difference": diff,
                "low": low,
                "high": high,
                "regime": regime(rows, r, o),
            }
        )
    return out


def regime(rows: list[dict[str, Any]], s2: dict[str, Any], larger: dict[str, Any]) -> dict:
    """Whether an S² row's comparison with the ``larger`` single-scale row tests the paper's
    claim: the S² row's own backbone at single scale (its smallest scale, the same weights, data
    and recipe) must be worse than ``larger`` — the difference ``larger - small`` with its
    interval above zero. ``{"small": row or None, "difference", "low", "high", "tested"}``."""
    smallest = s2["scales"].strip("()").split(",")[0].strip()
    candidates = [
        o
        for o in rows
        if o["backbone"] == s2["backbone"]
        and not is_s2(o)
        and o["weights"] == s2["weights"]
        and all(o[k] == s2[k] for k in COMPARE_KEYS)
    ]
    candidates.sort(key=lambda o: o["scales"] != f"({smallest})")
    if not candidates:
        return {"small": None, "difference": None, "low": None, "high": None, "tested": None}
    small = candidates[0]
    diff, low, high = difference_interval(
        larger["successes"], larger["episodes"], small["successes"], small["episodes"]
    )
    return {"small": small, "difference": diff, "low": low, "high": high, "tested": low > 0}


def _name(row: dict[str, Any]) -> str:
    weights = "" if row["weights"] in ("-", "random") else f" ({row['weights']})"
    return f"`{row['backbone']}` {row['scales']}{weights}"


def _points(diff: float, low: float, high: float) -> str:
    return f"{100 * diff:+.1f} points [{100 * low:+.1f}, {100 * high:+.1f}]"


def comparison_sentence(c: dict[str, Any]) -> str:
    """The report's sentence: the difference, and a verdict only where the ladder is in the
    paper's regime; otherwise why the comparison does not test the claim."""
    r, o, g = c["s2"], c["single"], c["regime"]
    head = (
        f"{r['task']}: S² {_name(r)} vs the single-scale {_name(o)} of equal FLOPs "
        f"({r['gflops_per_img']:.3f} vs {o['gflops_per_img']:.3f} GFLOPs/img): "
        f"{_points(c['difference'], c['low'], c['high'])} (95 % CI of the difference, Newcombe; "
        f"{r['episodes']} vs {o['episodes']} episodes, {r['recipe']})"
    )
    verdict = "better" if c["low"] > 0 else "worse" if c["high"] < 0 else "no difference shown"
    if g["small"] is None:
        return (
            f"{head} — {verdict}; whether `{o['backbone']}` beats `{r['backbone']}` at single "
            f"scale, as the paper's claim assumes, is not shown (no single-scale "
            f"`{r['backbone']}` row of this recipe)."
        )
    ladder = (
        f"at single scale `{o['backbone']}` − `{r['backbone']}` "
        f"{_points(g['difference'], g['low'], g['high'])}"
    )
    if not g["tested"]:
        return (
            f"{head} — not a test of the paper's claim: {ladder}, so the larger model is not "
            f"shown to be better than the small one, and S² is measured against a model that "
            "is no stronger than its own backbone."
        )
    return f"{head} — {verdict}; in the paper's regime ({ladder})."


def own_scale_comparisons(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each S² row against its own backbone at single scale (:func:`regime`'s ``small`` row):
    what the extra scales add, whatever the larger models do."""
    out = []
    for r in (r for r in rows if is_s2(r)):
        small = regime(rows, r, r)["small"]
        if small is None:
            continue
        diff, low, high = difference_interval(
            r["successes"], r["episodes"], small["successes"], small["episodes"]
        )
        out.append({"s2": r, "single": small, "difference": diff, "low": low, "high": high})
    return out


def own_scale_sentence(c: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """``cube_pick: S² `vit_micro` (64, 128) 92.0 % vs its single scale (64) 70.0 %: +22.0
    points [...] — better; blind 5.0 %, oracle 100.0 % (100 episodes each)``."""
    r, o = c["s2"], c["single"]
    verdict = "better" if c["low"] > 0 else "worse" if c["high"] < 0 else "no difference shown"
    bounds = {
        b["backbone"]: f"{100 * b['success']:.1f} %"
        for b in rows
        if b["backbone"] in (BLIND_LABEL, ORACLE_LABEL)
        and all(b[k] == r[k] for k in ("task", "dataset", "demos", "policy"))
    }
    floor = (
        f"; blind {bounds[BLIND_LABEL]}, oracle {bounds[ORACLE_LABEL]}" if len(bounds) == 2 else ""
    )
    return (
        f"{r['task']}: S² {_name(r)} {100 * r['success']:.1f} % vs its own single scale "
        f"{o['scales']} {100 * o['success']:.1f} %: {_points(c['difference'], c['low'], c['high'])}"
        f" (Newcombe; {r['episodes']} vs {o['episodes']} episodes) — {verdict}{floor}."
    )


# ---------------------------------------------------------------------- data efficiency
def _demos(row: dict[str, Any]) -> int | None:
    try:
        return int(row["demos"])
    except (TypeError, ValueError):
        return None


def demos_series(rows: list[dict[str, Any]], task: str) -> dict[tuple, dict[int, dict]]:
    """Per configuration (:data:`DEMOS_KEYS`) of ``task``: demonstrations -> row, for the
    configurations measured at two or more numbers of demonstrations."""
    series: dict[tuple, dict[int, dict]] = defaultdict(dict)
    for r in rows:
        n = _demos(r)
        if r["task"] == task and n is not None:
            series[tuple(r[k] for k in DEMOS_KEYS)][n] = r
    return {k: v for k, v in sorted(series.items(), key=str) if len(v) > 1}


def shared_seeds(rows: list[dict[str, Any]]) -> int | None:
    """The number of evaluation seeds when every row ran the same seed list (paired episodes:
    a difference between two rows is then not also a difference of start states), else None."""
    lists = {tuple(r.get("eval_seeds") or ()) for r in rows}
    if len(lists) != 1 or not next(iter(lists)):
        return None
    return len(next(iter(lists)))


def demos_table(rows: list[dict[str, Any]], task: str) -> str:
    """Markdown: success [95 % CI] per configuration (rows) and demonstrations (columns)."""
    series = demos_series(rows, task)
    if not series:
        return ""
    counts = sorted({n for s in series.values() for n in s})
    lines = [
        "| backbone | scales | weights | policy | recipe | "
        + " | ".join(f"{n} demos" for n in counts)
        + " |",
        "| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in counts) + " |",
    ]
    for key, by_n in series.items():
        backbone, scales, weights, policy, recipe, _ = key
        cells = [
            f"{100 * by_n[n]['success']:.1f}% [{100 * by_n[n]['ci95_low']:.1f}, "
            f"{100 * by_n[n]['ci95_high']:.1f}] ({by_n[n]['episodes']})"
            if n in by_n
            else "-"
            for n in counts
        ]
        lines.append(
            f"| {backbone} | {scales} | {weights} | {policy} | {recipe} | "
            + " | ".join(cells)
            + " |"
        )
    in_table = [r for s in series.values() for r in s.values()]
    seeds = shared_seeds(in_table)
    note = (
        f"Every cell ran the same {seeds} evaluation seeds per training seed (paired episodes)."
        if seeds
        else "The cells ran different evaluation seed lists (not paired)."
    )
    return "\n".join(lines) + f"\n\n{note}\n"


def plot_demos(rows: list[dict[str, Any]], path: Path, tasks: list[str]) -> Path | None:
    """One panel per task with data: success (95 % interval) against demonstrations (log
    scale), a line per configuration; ``None`` when no configuration has two counts."""
    panels = [(t, demos_series(rows, t)) for t in tasks]
    panels = [(t, s) for t, s in panels if s]
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, len(panels), figsize=(5.2 * len(panels) + 1.3, 4.2), dpi=120, squeeze=False
    )
    for ax, (task, series) in zip(axes[0], panels, strict=True):
        for key, by_n in series.items():
            ns = sorted(by_n)
            y = np.array([100 * by_n[n]["success"] for n in ns])
            lo = np.array([100 * by_n[n]["ci95_low"] for n in ns])
            hi = np.array([100 * by_n[n]["ci95_high"] for n in ns])
            backbone, scales, weights, *_ = key
            ax.errorbar(
                ns, y, yerr=[y - lo, hi - y], marker="o", capsize=3,
                label=f"{backbone} {scales}".replace(" -", ""),
            )  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({n for s in series.values() for n in s}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_ylim(-3, 103)
        ax.set_xlabel("demonstrations")
        ax.set_title(f"{task}: success vs demonstrations")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    axes[0][0].set_ylabel("success rate (%) with 95% interval")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
