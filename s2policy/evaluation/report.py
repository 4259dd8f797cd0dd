"""Success tables per task x backbone x scales x policy x randomization, a summary across
tasks, a success-vs-GFLOPs plot with each task's Pareto front, and the S² question answered from
the data: each S² row against the single-scale model of (about) equal FLOPs, with a 95 % interval
of the difference (Newcombe).

    python -m s2policy.evaluation.report runs=[multirun/cube_pick,outputs/cube_pick] out=reports/x
    s2policy-report runs=[multirun] tasks=[cube_pick,place,stack,push]

(``configs/report.yaml``, typed by :class:`ReportConfig`.)

Each argument is a ``results.json`` or a folder searched for ``**/eval*/results.json`` (a run's
``eval/`` and, say, ``eval_heldout/``). Episodes are pooled over the training seeds of one
configuration on one dataset (Wilson 95 % interval on the pooled count); the seeds' own rates
are listed to show their spread, and runs on other datasets stay in rows of their own.
Evaluations under domain randomization are labelled with its name (and the demonstrations' own
when they differ: ``heldout (demos: train)``). With several tasks, the summary gives each
configuration's rate per task (for one number of demonstrations) and their unweighted mean,
whose 95 % interval is the normal approximation of a mean of independent binomial rates (each
task's variance Agresti-Coull-adjusted: (k + 2) / (n + 4), so 0 % tasks still count).
"""

from __future__ import annotations

import csv
import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

from s2policy.encoders.s2 import BLIND, ORACLE
from s2policy.evaluation.ladder import (
    BLIND_LABEL,
    ORACLE_LABEL,
    comparison_sentence,
    demos_table,
    equal_flops_comparisons,
    own_scale_comparisons,
    own_scale_sentence,
    plot_demos,
)
from s2policy.evaluation.stats import mean_interval, success_rate
from s2policy.fileio import read_json

logger = logging.getLogger(__name__)

COLUMNS = ["task", "demos", "dataset", "backbone", "scales", "weights", "params_M",
           "gflops_per_img", "encoder_ms", "probe_object_r2", "probe_gripper_r2", "policy",
           "recipe", "randomization", "success", "ci95_low", "ci95_high", "normalized", "episodes",
           "seeds", "seed_rates", "pareto", "approx_r2"]  # fmt: skip
#: What a blind and an oracle row must share with a row to normalize its rate.
FLOOR_KEYS = ("task", "dataset", "demos", "policy", "execution", "randomization")
#: The row's recipe beside the encoder and policy: ``exec 8`` (actions executed per chunk),
#: ``ens 0.1`` (temporal ensembling), ``aug 4`` (augmented views), ``pool tokens``.
RECIPE_DEFAULT_POOL = "cls"
#: The prediction horizon of runs whose results do not record one (they all used 16); any
#: other horizon is part of the recipe (``horizon 2``).
RECIPE_DEFAULT_HORIZON = 16
#: What identifies a configuration across tasks (the summary's rows).
CONFIG_KEYS = ("demos", "backbone", "scales", "weights", "policy", "recipe", "randomization")


def find_results(paths: list[str | Path]) -> list[Path]:
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            every = sorted(p.rglob("results.json"))
            found += [f for f in every if f.parent.name.startswith("eval")] or every
        else:
            raise FileNotFoundError(f"{p} is neither a results.json nor a folder")
    if not found:
        raise FileNotFoundError(f"no results.json under {', '.join(map(str, paths))}")
    return found


def randomization_label(result: dict[str, Any]) -> str:
    evaluated = result.get("randomization", "off")
    trained = result.get("trained_randomization", "off")
    return evaluated if evaluated == trained else f"{evaluated} (demos: {trained})"


def encoder_pool(encoder: dict[str, Any]) -> str:
    """How an encoder record (a result's ``encoder``, an ``approx.json`` source) pooled its
    tokens; records written before pooling was recorded are the class token's."""
    return encoder.get("pool", RECIPE_DEFAULT_POOL)


def execution_label(result: dict[str, Any]) -> str:
    """What a run's chunks were and how they were executed: the prediction horizon when not 16
    (``horizon 2, exec 1``; blind and oracle rows normalize only rows of the same chunks), the
    evaluation settings (``exec 1``, ``exec 4, ens 0.1``), and for a diffusion policy its
    sampling steps and whether its EMA weights ran."""
    ev = result.get("eval", {})
    horizon = result.get("horizon", RECIPE_DEFAULT_HORIZON)
    parts = [f"horizon {horizon}"] if horizon != RECIPE_DEFAULT_HORIZON else []
    parts.append(f"exec {ev.get('n_action_steps', '?')}")
    if ev.get("ensemble_decay") is not None:
        parts.append(f"ens {ev['ensemble_decay']}")
    if ev.get("infer_when_remaining"):
        parts.append(f"overlap {ev['infer_when_remaining']}")
    if ev.get("num_inference_steps") is not None:
        parts.append(f"ddim {ev['num_inference_steps']}")
    if ev.get("use_ema"):
        parts.append("ema")
    return ", ".join(parts)


def recipe_label(result: dict[str, Any], execution: bool = True) -> str:
    """What else makes a run's configuration: a non-default pooling (and the spatial head of a
    token map: ``pool tokens softmax``) and the augmented views it trained on (image encoders
    only), a checkpoint selection (``select rollout``), and its execution
    (:func:`execution_label`)."""
    parts = []
    if result["encoder"]["backbone"] not in (BLIND, ORACLE):
        pool = encoder_pool(result["encoder"])
        if pool != RECIPE_DEFAULT_POOL:
            head = result.get("spatial_head", "attention") if pool == "tokens" else "attention"
            parts.append(f"pool {pool}" + (f" {head}" if head != "attention" else ""))
        if result.get("augment_views"):
            parts.append(f"aug {result['augment_views']}")
    if result.get("select", "last") != "last":
        parts.append(f"select {result['select']}")
    if not execution:  # an offline evaluation executes nothing; only its chunks count
        horizon = result.get("horizon", RECIPE_DEFAULT_HORIZON)
        return ", ".join([*parts, *([f"horizon {horizon}"] if horizon != 16 else [])]) or "-"
    return ", ".join([*parts, execution_label(result)])


def build_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, dataset, backbone, scales, weights, policy, recipe, randomization);
    episodes pooled over training seeds (never over datasets: runs on other demonstrations stay
    apart; never over recipes: another execution setting is another row)."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        enc = r["encoder"]
        key = (
            r["task"],
            r.get("dataset") or "-",
            r.get("demos") or "-",
            enc["backbone"],
            tuple(enc["scales"]),
            enc.get("weights"),
            r["policy"],
            recipe_label(r),
            randomization_label(r),
        )
        groups[key].append(r)
    rows = []
    for key, runs in sorted(groups.items(), key=str):
        task, dataset, demos, backbone, scales, weights, policy, recipe, rand = key
        blind, oracle = backbone == BLIND, backbone == ORACLE
        wins = sum(r["successes"] for r in runs)
        n = sum(r["n_episodes"] for r in runs)
        rate = success_rate(wins, n)
        enc_ms = [r["latency"].get("encoder_ms", {}).get("mean") for r in runs]
        enc_ms = [v for v in enc_ms if v is not None]
        by_seed = sorted((r.get("train_seed", 0), r["success_rate"]) for r in runs)
        seeds = {s for s, _ in by_seed}
        if len(seeds) < len(runs):
            logger.warning(
                "%s: %d runs of one configuration share training seeds %s (re-evaluations or "
                "retrainings of the same seed are pooled as more episodes, not more seeds)",
                " ".join(map(str, key)),
                len(runs),
                sorted(seeds),
            )
        probes = [r["probe"] for r in runs if r.get("probe")]
        seed_lists = {tuple(r.get("eval", {}).get("seeds") or ()) for r in runs}

        def probe_mean(key, probes=probes):
            values = [p[key] for p in probes if key in p]
            return float(np.mean(values)) if values else None

        rows.append(
            {
                "task": task,
                "demos": demos,
                "dataset": dataset,
                "backbone": BLIND_LABEL if blind else ORACLE_LABEL if oracle else backbone,
                "scales": "-" if blind or oracle else "(" + ", ".join(map(str, scales)) + ")",
                "weights": "-" if blind or oracle else (weights or "random"),
                "pool": None if blind or oracle else encoder_pool(runs[0]["encoder"]),
                "params_M": runs[0]["encoder"]["params"] / 1e6,
                "gflops_per_img": runs[0]["encoder"]["gflops_per_image"],
                "encoder_ms": float(np.mean(enc_ms)) if enc_ms else 0.0,
                "probe_object_r2": probe_mean("object_pos"),
                "probe_gripper_r2": probe_mean("gripper"),
                "policy": policy,
                "recipe": recipe,
                "execution": execution_label(runs[0]),
                "randomization": rand,
                "success": rate.rate,
                "successes": wins,
                "ci95_low": rate.low,
                "ci95_high": rate.high,
                "episodes": n,
                "seeds": len(seeds),
                "seed_rates": " ".join(f"s{s}:{100 * v:.0f}%" for s, v in by_seed),
                # the evaluation seeds every run of the row ran (None: they differ)
                "eval_seeds": next(iter(seed_lists)) if len(seed_lists) == 1 else None,
                "approx_r2": None,
            }
        )
    return pareto(normalize(rows))


def offline_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per configuration of offline evaluations (:mod:`s2policy.evaluation.offline`):
    the executed action's error, episodes pooled over training seeds, with Student's t interval
    over episodes."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        enc = r["encoder"]
        where = (r["task"], r.get("dataset") or "-", r.get("demos") or "-")
        what = (enc["backbone"], tuple(enc["scales"]), enc.get("weights"), r["policy"])
        key = (*where, *what, recipe_label(r, False))
        groups[key].append(r)
    rows = []
    for key, runs in sorted(groups.items(), key=str):
        task, dataset, demos, backbone, scales, weights, policy, recipe = key
        image = backbone not in (BLIND, ORACLE)
        row = {
            "task": task, "demos": demos, "dataset": dataset,
            "backbone": backbone if image else BLIND_LABEL if backbone == BLIND else ORACLE_LABEL,
            "scales": "(" + ", ".join(map(str, scales)) + ")" if image else "-",
            "weights": (weights or "random") if image else "-",
            "gflops_per_img": runs[0]["encoder"]["gflops_per_image"],
            "policy": policy, "recipe": recipe,
            "seeds": len({r.get("train_seed", 0) for r in runs}),
        }  # fmt: skip
        for metric in ("mse", "l1"):
            values = np.concatenate([r["offline"][f"episode_{metric}"] for r in runs])
            mean, low, high = mean_interval(values)
            low = low if math.isnan(low) else max(0.0, low)  # an error is never below 0
            row[f"action_{metric}"] = (mean, low, high)
        row["episodes"] = int(sum(r["offline"]["episodes"] for r in runs))
        by_step = [r["offline"]["chunk_mse_by_step"] for r in runs]
        # the farthest chunk step that every run has data for (episodes end before the horizon)
        last = min(max((i for i, v in enumerate(s) if v is not None), default=0) for s in by_step)
        row["chunk_mse_first"] = float(np.mean([s[0] for s in by_step]))
        row["chunk_mse_last"] = float(np.mean([s[last] for s in by_step]))
        row["chunk_last_step"] = last
        row["held_out"] = all(r.get("held_out") for r in runs)
        rows.append(row)
    return rows


def offline_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| task | demos | backbone | scales | weights | GFLOPs/img | policy | recipe | "
        "action MSE [95% CI] | action L1 [95% CI] | chunk MSE now → farthest step | episodes | "
        "seeds | held out |",
        "| --- | ---: | --- | --- | --- | ---: | --- | --- | --- | --- | --- | ---: | ---: | --- |",
    ]

    def cell(m):
        return f"{m[0]:.4g} [{m[1]:.4g}, {m[2]:.4g}]"

    for r in rows:
        lines.append(
            f"| {r['task']} | {r['demos']} | {r['backbone']} | {r['scales']} | {r['weights']} | "
            f"{r['gflops_per_img']:.3f} | {r['policy']} | {r['recipe']} | "
            f"{cell(r['action_mse'])} | {cell(r['action_l1'])} | "
            f"{r['chunk_mse_first']:.4g} → {r['chunk_mse_last']:.4g} (+{r['chunk_last_step']}) | "
            f"{r['episodes']} | "
            f"{r['seeds']} | {'yes' if r['held_out'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def pareto(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mark each row's ``pareto``: no other row of its task, dataset, policy, execution and
    randomization is at least as successful for at most its GFLOPs per image (and better in
    one). The oracle (no encoder: privileged state) is a ceiling, not a point: ``None``."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        r["pareto"] = None
        if r["backbone"] != ORACLE_LABEL:
            groups[tuple(r[k] for k in FLOOR_KEYS)].append(r)
    for group in groups.values():
        for r in group:
            r["pareto"] = not any(
                o["gflops_per_img"] <= r["gflops_per_img"]
                and o["success"] >= r["success"]
                and (o["gflops_per_img"] < r["gflops_per_img"] or o["success"] > r["success"])
                for o in group
            )
    return rows


def attach_approx(rows: list[dict[str, Any]], approx: list[dict[str, Any]]) -> None:
    """Fill ``approx_r2`` from ``approx.json`` results (:mod:`s2policy.evaluation.approx`): the
    held-out R² of a linear map from the row's encoder features to the target encoder's, on the
    same dataset (matched by file name) and the same features: backbone, scales, weights and
    pooling (a class-token R² says nothing of a token-map row; files without ``pool`` are the
    class token's)."""
    for result in approx:
        dataset = Path(result["dataset"]).name
        for a in result["rows"]:
            enc = a["source_encoder"]
            scales = "(" + ", ".join(map(str, enc["scales"])) + ")"
            for r in rows:
                if (
                    Path(str(r["dataset"])).name == dataset
                    and r["backbone"] == enc["backbone"]
                    and r["scales"] == scales
                    and r["weights"] == (enc["weights"] or "random")
                    and r["pool"] == encoder_pool(enc)
                ):
                    r["approx_r2"] = a["r2"]


def normalize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row's ``normalized`` score ``(rate - blind) / (oracle - blind)``: 0 = what the state
    alone gives, 1 = what the privileged object state gives the same policy; ``None`` without a
    blind and an oracle row of the same task, dataset, policy and randomization (or when the
    oracle is not above the blind floor)."""
    bounds: dict[tuple, dict[str, float]] = defaultdict(dict)
    for r in rows:
        if r["backbone"] in (BLIND_LABEL, ORACLE_LABEL):
            bounds[tuple(r[k] for k in FLOOR_KEYS)][r["backbone"]] = r["success"]
    for r in rows:
        b = bounds.get(tuple(r[k] for k in FLOOR_KEYS), {})
        floor, ceiling = b.get(BLIND_LABEL), b.get(ORACLE_LABEL)
        ok = floor is not None and ceiling is not None and ceiling > floor
        r["normalized"] = (r["success"] - floor) / (ceiling - floor) if ok else None
    return rows


def summary_rows(rows: list[dict[str, Any]], tasks: list[str]) -> list[dict[str, Any]]:
    """One row per configuration: its rate on each task and the unweighted mean over the tasks
    it was evaluated on (95 % normal-approximation interval of a mean of independent rates, with
    Agresti-Coull-adjusted per-task variances)."""
    z = NormalDist().inv_cdf(0.975)
    configs: dict[tuple, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        configs[tuple(r[k] for k in CONFIG_KEYS)][r["task"]] = r
    out = []
    for key, per_task in sorted(configs.items(), key=str):
        rates = np.array([per_task[t]["success"] for t in tasks if t in per_task])
        counts = np.array([per_task[t]["episodes"] for t in tasks if t in per_task])
        mean = float(rates.mean())
        # Agresti-Coull-adjusted variances, so that 0 % and 100 % tasks still carry uncertainty.
        adjusted = (rates * counts + 2) / (counts + 4)
        variance = (adjusted * (1 - adjusted) / (counts + 4)).sum()
        half = z * float(np.sqrt(variance)) / len(rates)
        out.append(
            {
                **dict(zip(CONFIG_KEYS, key, strict=True)),
                "per_task": {t: per_task.get(t) for t in tasks},
                "mean_success": mean,
                "ci95_low": max(0.0, mean - half),
                "ci95_high": min(1.0, mean + half),
                "tasks": len(rates),
                "episodes": int(counts.sum()),
            }
        )
    return out


def summary_markdown(summary: list[dict[str, Any]], tasks: list[str]) -> str:
    lines = [
        "| demos | backbone | scales | weights | policy | recipe | randomization | "
        + " | ".join(f"{t} success (episodes)" for t in tasks)
        + " | mean over tasks [95% CI] | tasks |",
        "| ---: | --- | --- | --- | --- | --- | --- | "
        + " | ".join("---:" for _ in tasks)
        + " | --- | ---: |",
    ]
    for s in summary:
        cells = [
            "-" if s["per_task"][t] is None else
            f"{100 * s['per_task'][t]['success']:.1f}% ({s['per_task'][t]['episodes']})"
            for t in tasks
        ]  # fmt: skip
        lines.append(
            f"| {s['demos']} | {s['backbone']} | {s['scales']} | {s['weights']} | {s['policy']} | "
            f"{s['recipe']} | {s['randomization']} | " + " | ".join(cells) + " | "
            f"{100 * s['mean_success']:.1f}% [{100 * s['ci95_low']:.1f}, "
            f"{100 * s['ci95_high']:.1f}] | {s['tasks']}/{len(tasks)} |"
        )
    return "\n".join(lines) + "\n"


def to_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| task | demos | backbone | scales | weights | params (M) | GFLOPs/img | "
        "encoder ms/call | probe R² object | probe R² gripper | policy | recipe | randomization | "
        "success [95% CI] | normalized | episodes | seeds (per-seed success) | Pareto | "
        "feature R² → target |",
        "| --- | ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | --- "
        "| ---: | ---: | --- | --- | ---: |",
    ]

    def r2(v):
        return "-" if v is None else f"{v:.3f}"

    for r in rows:
        lines.append(
            f"| {r['task']} | {r['demos']} | {r['backbone']} | {r['scales']} | {r['weights']} | "
            f"{r['params_M']:.2f} | {r['gflops_per_img']:.3f} | {r['encoder_ms']:.1f} | "
            f"{r2(r['probe_object_r2'])} | {r2(r['probe_gripper_r2'])} | {r['policy']} | "
            f"{r['recipe']} | {r['randomization']} | "
            f"{100 * r['success']:.1f}% [{100 * r['ci95_low']:.1f}, {100 * r['ci95_high']:.1f}] | "
            f"{r2(r['normalized'])} | {r['episodes']} | {r['seeds']} ({r['seed_rates']}) | "
            f"{'front' if r['pareto'] else '-'} | {r2(r['approx_r2'])} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path, tasks: list[str] | None = None) -> Path:
    """One panel per task (in ``tasks`` order): success (95 % interval) against encoder GFLOPs
    per image, the Pareto front of each execution setting drawn as a grey step line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = tasks or sorted({r["task"] for r in rows})
    fig, axes = plt.subplots(
        1, len(tasks), figsize=(5.2 * len(tasks) + 1.3, 4.2), dpi=120, sharey=True, squeeze=False
    )
    for ax, task in zip(axes[0], tasks, strict=True):
        for r in (r for r in rows if r["task"] == task):
            y = 100 * r["success"]
            if r["backbone"] == ORACLE_LABEL:  # no encoder: a ceiling line, not a point
                label = f"oracle {r['policy']} {r['recipe']} ({y:.0f}%)"
                ax.axhline(y, color="0.4", ls="--", lw=1, label=label)
                continue
            err = [[max(0.0, y - 100 * r["ci95_low"])], [max(0.0, 100 * r["ci95_high"] - y)]]
            weights = "" if r["weights"] in ("-", "random") else f" {r['weights']}"
            rand = "" if r["randomization"] == "off" else f" [{r['randomization']}]"
            demos = "" if r["demos"] == "-" else f" {r['demos']} demos"
            label = (
                f"{r['backbone']} {r['scales']}{weights} {r['policy']} ({r['recipe']}){rand}{demos}"
            )
            ax.errorbar(
                r["gflops_per_img"], y, yerr=err, fmt="o", capsize=4, label=label.replace(" -", "")
            )
        fronts: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
        for r in rows:
            if r["task"] == task and r["pareto"]:
                fronts[tuple(r[k] for k in FLOOR_KEYS)].append(r)
        for i, front in enumerate(fronts.values()):
            front.sort(key=lambda r: r["gflops_per_img"])
            ax.step(
                [r["gflops_per_img"] for r in front],
                [100 * r["success"] for r in front],
                where="post",
                color="0.6",
                lw=1.2,
                zorder=0,
                label="Pareto front" if i == 0 else None,
            )
        ax.set_xscale("symlog", linthresh=0.01)
        ax.set_xlabel("encoder GFLOPs per image (symlog; blind = 0; oracle dashed)")
        ax.set_ylim(-3, 103)
        ax.set_title(f"{task}: success vs encoder cost")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    axes[0][0].set_ylabel("success rate (%) with 95% interval")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(
    paths: list[str | Path],
    out: str | Path,
    tasks: list[str] | None = None,
    approx: list[str | Path] | None = None,
) -> tuple[str, list[Path]]:
    """Read results, write ``report.md``, ``report.csv`` and ``success_vs_gflops.png`` to ``out``
    (one table per task, each followed by its S²-vs-equal-FLOPs sentences, plus a summary across
    tasks when there are several); returns the markdown and the written files. ``tasks`` keeps
    only those tasks, in that order; ``approx`` names ``approx.json`` files whose R² fill the
    ``approx_r2`` column."""
    files = find_results(paths)
    results = [read_json(f, "evaluation results.json", "rerun that evaluation") for f in files]
    found = sorted({r["task"] for r in results})
    if tasks:
        missing = [t for t in tasks if t not in found]
        if missing:
            raise FileNotFoundError(
                f"no results of task(s) {missing} under {', '.join(map(str, paths))}; "
                f"tasks found: {found}"
            )
        results = [r for r in results if r["task"] in tasks]
    tasks = list(tasks or found)
    offline = offline_rows([r for r in results if r.get("kind") == "offline"])
    results = [r for r in results if r.get("kind") != "offline"]
    rows = build_rows(results)
    for path in approx or []:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"approx file {path} not found: write it with python -m s2policy.evaluation.approx "
                "... out=<folder>"
            )
        attach_approx(rows, [read_json(path, "approx.json", "rerun the approximation")])
    comparisons = equal_flops_comparisons(rows)
    own_scale = own_scale_comparisons(rows)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md = ""
    written = [out / "report.md", out / "report.csv"]
    if len(tasks) > 1:
        summary = summary_rows(rows, tasks)
        md += "### Summary across tasks\n\n" + summary_markdown(summary, tasks) + "\n"
        with (out / "summary.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow([*CONFIG_KEYS, *tasks, "mean_success", "ci95_low", "ci95_high"])
            for s in summary:
                per = [
                    None if s["per_task"][t] is None else s["per_task"][t]["success"] for t in tasks
                ]
                writer.writerow(
                    [
                        *(s[k] for k in CONFIG_KEYS),
                        *per,
                        s["mean_success"],
                        s["ci95_low"],
                        s["ci95_high"],
                    ]
                )
        written.append(out / "summary.csv")
    for task in tasks:
        task_rows = [r for r in rows if r["task"] == task]
        md += f"### {task}\n\n" + (to_markdown(task_rows) + "\n" if task_rows else "")
        task_offline = [r for r in offline if r["task"] == task]
        if task_offline:
            md += (
                f"#### {task}: offline action error on recorded episodes (raw action units; "
                "an action error is not a success rate)\n\n" + offline_markdown(task_offline)
                + "\n"
            )  # fmt: skip
        sentences = [own_scale_sentence(c, rows) for c in own_scale if c["s2"]["task"] == task] + [
            comparison_sentence(c) for c in comparisons if c["s2"]["task"] == task
        ]
        md += "".join(f"- {line}\n" for line in sentences) + ("\n" if sentences else "")
        by_demos = demos_table(rows, task)
        if by_demos:
            md += f"#### {task}: success by number of demonstrations\n\n{by_demos}\n"
    (out / "report.md").write_text(md)
    with (out / "report.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    if rows:
        written.append(plot(rows, out / "success_vs_gflops.png", tasks))
    demos_plot = plot_demos(rows, out / "success_vs_demos.png", tasks)
    return md, [*written, *([demos_plot] if demos_plot else [])]


@dataclass
class ReportConfig:
    """``configs/report.yaml``: which results, where the report goes."""

    #: ``results.json`` files or folders searched for ``**/eval*/results.json``.
    runs: list[str] = field(default_factory=list)
    #: Output folder; null: ``<first run>/report`` (beside a results.json given as a file).
    out: str | None = None
    #: Only these tasks, in this order (null: every task found, sorted).
    tasks: list[str] | None = None
    #: ``approx.json`` files of :mod:`s2policy.evaluation.approx` (the ``approx_r2`` column).
    approx: list[str] = field(default_factory=list)

    def __post_init__(self):
        if not self.runs:
            raise ValueError(
                "runs must name at least one results.json or folder, e.g. runs=[multirun/cube_pick]"
            )
        if self.tasks is not None and not self.tasks:
            raise ValueError("tasks must not be an empty list (null: every task found)")

    def out_dir(self) -> Path:
        first = Path(self.runs[0])
        return (
            Path(self.out) if self.out else (first.parent if first.is_file() else first) / "report"
        )


def run_report(cfg: ReportConfig) -> None:
    md, written = write_report(cfg.runs, cfg.out_dir(), cfg.tasks, cfg.approx)
    print(md)
    for path in written:
        print(f"wrote {path}")


def main(argv: Sequence[str] | None = None) -> None:
    """``s2policy-report runs=[...] out=... tasks=[...]`` (``argv``: in-process arguments)."""
    from s2policy.hydra_app import run_hydra, schemas

    run_hydra("report", "report", run_report, argv, schemas(report_schema=ReportConfig))


if __name__ == "__main__":
    main()
