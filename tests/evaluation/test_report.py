import csv

import pytest

from s2policy.evaluation.report import build_rows, main, write_report


def result(backbone, scales, seed, successes, n=10, gflops=1.0, policy="mlp"):
    return {
        "task": "cube_pick",
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
        "episodes": [],
    }


SYNTHETIC = [
    result("vit_t", [224], 0, 4),
    result("vit_t", [224], 1, 6),
    result("vit_t", [224, 448], 0, 9, gflops=5.0) | {"probe": {"object_pos": 0.95}},
    result("vit_t", [224, 448], 1, 7, gflops=5.0) | {"probe": {"object_pos": 0.85}},
    result("none", [], 0, 1),
]


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
    runs = tmp_path / "runs"
    import json

    for i, r in enumerate(SYNTHETIC):
        d = runs / f"job{i}" / "eval"
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps(r))
    md, files = write_report([runs], tmp_path / "report")
    assert (
        "| cube_pick | vit_t | (224, 448) | random | 5.70 | 5.000 | 4.0 | 0.900 | - | mlp | "
        "80.0% [58.4, 91.9] | 20 |" in md
    )
    assert "blind (state only)" in md
    rows = list(csv.DictReader((tmp_path / "report" / "report.csv").open()))
    assert len(rows) == 3
    png = tmp_path / "report" / "success_vs_gflops.png"
    assert png in files and png.read_bytes()[:4] == b"\x89PNG"
    main([str(runs), "--out", str(tmp_path / "cli")])
    assert (tmp_path / "cli" / "report.md").read_text() == md


def test_no_results_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results.json"):
        write_report([tmp_path], tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="neither"):
        write_report([tmp_path / "missing"], tmp_path / "out")
