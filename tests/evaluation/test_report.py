import csv
import json
import math

import pytest

from s2policy.evaluation.report import build_rows, main, write_report


def result(backbone, scales, seed, successes, n=10, gflops=1.0, policy="mlp", task="cube_pick"):
    return {
        "task": task,
        "policy": policy,
        "train_seed": seed,
        "encoder": {
            "backbone": backbone,
            "scales": scales,
            "weights": None,
            "params": 5_700_000 if backbone != "none" else 0,
            "gflops_per_image": gflops if backbone != "none" else 0.0,
        },
        "n_episodes": n,
        "successes": successes,
        "success_rate": successes / n,
        "latency": {"encoder_ms": {"mean": 4.0}} if backbone != "none" else {},
        "eval": {"n_action_steps": 8, "ensemble_decay": None, "infer_when_remaining": 0},
        "episodes": [],
    }


SYNTHETIC = [
    result("vit_t", [224], 0, 4),
    result("vit_t", [224], 1, 6),
    result("vit_t", [224, 448], 0, 9, gflops=5.0) | {"probe": {"object_pos": 0.95}},
    result("vit_t", [224, 448], 1, 7, gflops=5.0) | {"probe": {"object_pos": 0.85}},
    result("none", [], 0, 1),
]


def write_runs(root, results):
    for i, r in enumerate(results):
        d = root / r["task"] / f"job{i}" / "eval"
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps(r))
    return root


def test_rows_pool_episodes_over_seeds():
    rows = {(r["backbone"], r["scales"]): r for r in build_rows(SYNTHETIC)}
    single, s2 = rows[("vit_t", "(224)")], rows[("vit_t", "(224, 448)")]
    assert single["episodes"] == 20 and single["success"] == pytest.approx(0.5)
    assert s2["success"] == pytest.approx(0.8) and s2["seeds"] == 2
    assert s2["seed_rates"] == "s0:90% s1:70%"
    assert s2["ci95_low"] == pytest.approx(0.5840, abs=1e-4)  # Wilson, 16/20
    blind = rows[("blind (state only)", "-")]
    assert blind["gflops_per_img"] == 0 and blind["params_M"] == 0


def test_report_files(tmp_path):
    runs = write_runs(tmp_path / "runs", SYNTHETIC)
    md, files = write_report([runs], tmp_path / "report")
    assert (
        "| cube_pick | - | vit_t | (224, 448) | random | 5.70 | 5.000 | 4.0 | 0.900 | - | mlp | "
        "exec 8 | off | 80.0% [58.4, 91.9] | - | 20 |" in md
    )
    assert "blind (state only)" in md and "Summary across tasks" not in md
    rows = list(csv.DictReader((tmp_path / "report" / "report.csv").open()))
    assert len(rows) == 3
    png = tmp_path / "report" / "success_vs_gflops.png"
    assert png in files and png.read_bytes()[:4] == b"\x89PNG"
    main([f"runs=[{runs}]", f"out={tmp_path / 'cli'}"])
    assert (tmp_path / "cli" / "report.md").read_text() == md


def test_no_results_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results.json"):
        write_report([tmp_path], tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="neither"):
        write_report([tmp_path / "missing"], tmp_path / "out")


MULTI = [
    *SYNTHETIC,
    result("vit_t", [224], 0, 2, task="stack"),
    result("vit_t", [224, 448], 0, 6, task="stack"),
    result("vit_t", [224, 448], 0, 3, task="stack")
    | {"randomization": "heldout", "trained_randomization": "off"},
    result("vit_t", [224], 0, 10, task="push"),
]


def test_multi_task_report_has_one_table_per_task_and_a_summary(tmp_path):
    runs = write_runs(tmp_path / "multirun", MULTI)
    md, files = write_report([runs], tmp_path / "report", tasks=["cube_pick", "stack"])
    assert md.index("### Summary across tasks") < md.index("### cube_pick") < md.index("### stack")
    assert "### push" not in md
    # S² vit_t: 16/20 on cube pick, 6/10 on stack -> mean 70 %, interval of a mean of two rates.
    pa, pb = (16 + 2) / 24, (6 + 2) / 14  # Agresti-Coull-adjusted rates
    half = 1.959964 * math.sqrt(pa * (1 - pa) / 24 + pb * (1 - pb) / 14) / 2
    row = (
        f"| - | vit_t | (224, 448) | random | mlp | exec 8 | off | 80.0% (20) | 60.0% (10) | 70.0% "
        f"[{100 * (0.7 - half):.1f}, {100 * (0.7 + half):.1f}] | 2/2 |"
    )
    assert row in md
    assert "| - | blind (state only) | - | - | mlp | exec 8 | off | 10.0% (10) | - | 10.0%" in md
    # Held-out evaluations are their own rows, labelled with both settings.
    assert (
        "| - | vit_t | (224, 448) | random | mlp | exec 8 | heldout (demos: off) | - | 30.0% (10) |"
        in md
    )
    assert (
        "| stack | - | vit_t | (224, 448) | random | 5.70 | 1.000 | 4.0 | - | - | mlp | exec 8 | "
        "heldout" in md
    )
    summary = list(csv.DictReader((tmp_path / "report" / "summary.csv").open()))
    assert tmp_path / "report" / "summary.csv" in files and len(summary) == 4
    assert {r["randomization"] for r in summary} == {"off", "heldout (demos: off)"}
    main([f"runs=[{runs}]", f"out={tmp_path / 'all'}"])
    assert "### push" in (tmp_path / "all" / "report.md").read_text()


def test_missing_task_is_a_clear_error(tmp_path):
    runs = write_runs(tmp_path / "multirun", SYNTHETIC)
    with pytest.raises(FileNotFoundError, match=r"no results of task\(s\) \['place'\].*cube_pick"):
        write_report([runs], tmp_path / "out", tasks=["cube_pick", "place"])


def test_runs_on_other_datasets_are_not_pooled():
    small = result("vit_t", [224], 0, 2) | {"dataset": "datasets/cube_pick.zarr", "demos": 50}
    large = result("vit_t", [224], 0, 8) | {"dataset": "datasets/cube_pick_200.zarr", "demos": 200}
    rows = build_rows([small, large])
    assert sorted((r["demos"], r["success"], r["episodes"]) for r in rows) == [
        (50, 0.2, 10),
        (200, 0.8, 10),
    ]


def test_cli_tasks_and_default_out(tmp_path, capsys):
    runs = write_runs(tmp_path / "multirun", MULTI)
    main([f"runs=[{runs}]", "tasks=[stack,cube_pick]"])
    md = (runs / "report" / "report.md").read_text()  # default: <first run>/report
    assert md.index("### stack") < md.index("### cube_pick") and "### push" not in md
    assert f"wrote {runs / 'report' / 'summary.csv'}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["runs=[x]", "tsks=[place]"], "Key 'tsks' not in 'ReportConfig'"),
        (["out=x"], "runs must name at least one"),
    ],
)
def test_cli_bad_keys_are_clear_errors(argv, message, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err


def test_runs_sharing_a_training_seed_count_as_one_seed(caplog):
    twice = [result("vit_t", [224], 0, 4), result("vit_t", [224], 0, 6)]
    with caplog.at_level("WARNING"):
        (row,) = build_rows(twice)
    assert row["episodes"] == 20 and row["seeds"] == 1
    assert "share training seeds [0]" in caplog.text


def test_diffusion_sampling_steps_and_ema_are_part_of_the_recipe():
    def run(seed, steps, ema):
        r = result("vit_t", [224], seed, 5, policy="diffusion")
        r["eval"] = {"n_action_steps": 8, "num_inference_steps": steps, "use_ema": ema}
        return r

    rows = build_rows([run(0, 16, True), run(1, 16, True), run(0, 4, True), run(0, 16, False)])
    assert sorted(r["recipe"] for r in rows) == [
        "exec 8, ddim 16",
        "exec 8, ddim 16, ema",
        "exec 8, ddim 4, ema",
    ]


LADDER = (
    [
        # vit_micro S² costs what vit_mini costs at one scale (0.30 vs 0.29 GFLOPs): the comparison.
        result("vit_micro", [64, 128], s, k, n=100, gflops=0.299)
        for s, k in ((0, 80), (1, 76))
    ]
    + [result("vit_mini", [64], s, k, n=100, gflops=0.292) for s, k in ((0, 60), (1, 64))]
    + [result("vit_micro", [64], s, k, n=100, gflops=0.060) for s, k in ((0, 20), (1, 22))]
    + [result("vit_midi", [64], s, k, n=100, gflops=1.233) for s, k in ((0, 70), (1, 72))]
    + [result("none", [], s, 4, n=100) for s in (0, 1)]
)


def test_pareto_front_marks_undominated_rows():
    rows = {(r["backbone"], r["scales"]): r for r in build_rows(LADDER)}
    assert rows[("vit_micro", "(64, 128)")]["pareto"]  # 78 % at 0.299
    assert rows[("vit_micro", "(64)")]["pareto"]  # cheapest image row
    assert rows[("blind (state only)", "-")]["pareto"]  # 0 GFLOPs
    # 62 % at 0.292: micro S² is better but costs more, no cheaper row is better: on the front.
    assert rows[("vit_mini", "(64)")]["pareto"]
    assert not rows[("vit_midi", "(64)")]["pareto"]  # 71 % at 1.233: micro S² beats it cheaper


def test_equal_flops_sentence_uses_the_difference_interval(tmp_path):
    from s2policy.evaluation.report import equal_flops_comparisons
    from s2policy.evaluation.stats import difference_interval

    rows = build_rows(LADDER)
    (c,) = equal_flops_comparisons(rows)  # only micro S² has an equal-FLOPs single-scale peer
    assert c["single"]["backbone"] == "vit_mini"  # not vit_midi (4x) nor vit_micro (1/5)
    assert (c["difference"], c["low"], c["high"]) == difference_interval(156, 200, 124, 200)
    md, _ = write_report([write_runs(tmp_path / "runs", LADDER)], tmp_path / "out")
    assert (
        "- cube_pick: S² `vit_micro` (64, 128) vs the single-scale `vit_mini` (64) of equal FLOPs "
        "(0.299 vs 0.292 GFLOPs/img): +16.0 points" in md
    )
    assert "— better; in the paper's regime (at single scale `vit_mini` − `vit_micro` +41.0 " in md
    # A pretrained S² row is not compared with random-init single-scale rows (or vice versa).
    pretrained = [
        r | {"encoder": {**r["encoder"], "weights": "mae"}} if len(r["encoder"]["scales"]) > 1
        else r
        for r in LADDER
    ]  # fmt: skip
    assert equal_flops_comparisons(build_rows(pretrained)) == []


def test_report_reads_approximation_r2(tmp_path):
    runs = write_runs(tmp_path / "runs", LADDER)
    approx = tmp_path / "approx.json"
    approx.write_text(
        json.dumps(
            {
                "dataset": "somewhere/else/-",  # matched by file name (results carry none: "-")
                "rows": [
                    {
                        "source_encoder": {
                            "backbone": "vit_micro",
                            "scales": [64, 128],
                            "weights": None,
                        },
                        "r2": 0.875,
                    },
                    {  # the same encoder's token map: other features, not these class-token rows
                        "source_encoder": {
                            "backbone": "vit_micro",
                            "scales": [64, 128],
                            "weights": None,
                            "pool": "tokens",
                        },
                        "r2": 0.25,
                    },
                ],
            }
        )
    )
    md, _ = write_report([runs], tmp_path / "out", approx=[approx])
    line = next(x for x in md.splitlines() if "| vit_micro | (64, 128) |" in x)
    assert line.endswith("| front | 0.875 |"), line
    with pytest.raises(FileNotFoundError, match="approx file"):
        write_report([runs], tmp_path / "out", approx=[tmp_path / "missing.json"])


def test_the_regime_sentence_says_when_the_larger_model_is_not_better_at_single_scale(tmp_path):
    """The paper's claim is about a larger model that beats the small one at single scale."""
    from s2policy.evaluation.report import equal_flops_comparisons

    weaker = [  # vit_mini below vit_micro at single scale: the comparison tests nothing
        r if r["encoder"]["backbone"] != "vit_mini" else r | {"successes": 10, "success_rate": 0.1}
        for r in LADDER
    ]
    (c,) = equal_flops_comparisons(build_rows(weaker))
    assert c["regime"]["tested"] is False and c["low"] > 0  # S² "wins" by a wide margin ...
    md, _ = write_report([write_runs(tmp_path / "weaker", weaker)], tmp_path / "out")
    line = next(x for x in md.splitlines() if "of equal FLOPs" in x)
    assert "— not a test of the paper's claim: at single scale `vit_mini` − `vit_micro` " in line
    assert "better" not in line.split("—")[1].replace("shown to be better", "")  # ... no verdict
    tie = [  # equal at single scale: the interval of the difference covers 0, not tested either
        r if r["encoder"]["backbone"] != "vit_mini" else r | {"successes": 21, "success_rate": 0.21}
        for r in LADDER
    ]
    assert equal_flops_comparisons(build_rows(tie))[0]["regime"]["tested"] is False
    no_small = [
        r
        for r in LADDER
        if r["encoder"]["scales"] != [64] or r["encoder"]["backbone"] != "vit_micro"
    ]
    md, _ = write_report([write_runs(tmp_path / "no_small", no_small)], tmp_path / "out2")
    assert "as the paper's claim assumes, is not shown (no single-scale `vit_micro` row" in md


def test_success_by_demonstrations_table_and_plot(tmp_path):
    seeds = list(range(100_000, 100_010))
    runs = [
        result(b, sc, s, k, gflops=g) | {"demos": n, "eval": {"n_action_steps": 1, "seeds": seeds}}
        for b, sc, g in (("vit_micro", [64], 0.06), ("vit_micro", [64, 128], 0.299))
        for n, k in ((25, 2), (50, 5), (200, 9))
        for s in (0, 1)
    ]
    md, written = write_report([write_runs(tmp_path / "runs", runs)], tmp_path / "out")
    assert "#### cube_pick: success by number of demonstrations" in md
    assert "| 25 demos | 50 demos | 200 demos |" in md
    row = next(x for x in md.splitlines() if x.startswith("| vit_micro | (64, 128) |"))
    assert "| 20.0% [8.1, 41.6] (20) | 50.0% [29.9, 70.1] (20) | 90.0% [69.9, 97.2] (20) |" in row
    assert "Every cell ran the same 10 evaluation seeds per training seed (paired episodes)." in md
    assert tmp_path / "out" / "success_vs_demos.png" in written
    other = [r | {"eval": {**r["eval"], "seeds": [1, 2]}} if r["demos"] == 25 else r for r in runs]
    md, _ = write_report([write_runs(tmp_path / "other", other)], tmp_path / "out3")
    assert "different evaluation seed lists (not paired)" in md
    md, written = write_report([write_runs(tmp_path / "one", LADDER)], tmp_path / "out4")
    assert "success by number of demonstrations" not in md  # one count: no such table
    assert not (tmp_path / "out4" / "success_vs_demos.png").exists()


def test_each_s2_row_is_compared_with_its_own_single_scale(tmp_path):
    md, _ = write_report([write_runs(tmp_path / "runs", LADDER)], tmp_path / "out")
    line = next(x for x in md.splitlines() if "vs its own single scale" in x)
    assert line.startswith(
        "- cube_pick: S² `vit_micro` (64, 128) 78.0 % vs its own single scale (64) 21.0 %: "
        "+57.0 points ["
    )
    assert line.endswith("(Newcombe; 200 vs 200 episodes) — better.")  # no oracle row: no bounds
