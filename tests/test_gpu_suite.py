"""benchmarks/gpu_suite.py: its smoke mode runs every part on a CPU and writes both reports; a
part that fails or times out is reported without losing the others; the targets read right."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", ROOT / "benchmarks" / "gpu_suite.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_smoke_runs_every_part(tmp_path):
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_suite.py", "--smoke", "--device", "cpu"]
        + ["--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    suite = json.loads((tmp_path / "gpu_suite.json").read_text())
    md = (tmp_path / "gpu_suite.md").read_text()
    assert md in proc.stdout  # the markdown is printed last (the device call's output tail)
    gpu_suite = load_suite()
    for part in gpu_suite.PARTS:
        assert suite[part]["status"] == "ok", (part, suite[part])
        assert f"### {part} — ok" in md
    rows = suite["encoder"]["rows"]
    assert {(r["batch"], r["variant"]) for r in rows} == {
        (b, v) for b in (1, 2) for v in ("single scale", "s2wrapper", "S² batched")
    }
    assert all(r["img_per_s"] > 0 for r in rows)
    assert suite["cache"]["pipeline_fps"] > 0 and suite["cache"]["encoder_only_fps"] > 0
    assert [r["policy"] for r in suite["train"]["rows"]] == ["mlp", "diffusion"]
    policies = [r["policy"] for r in suite["latency"]["rows"]]
    assert policies == ["mlp", "diffusion DDIM 16", "diffusion DDIM 4", "mlp"]
    assert [r["image_size"] for r in suite["latency"]["rows"]] == [32, 32, 32, 96]
    assert all(r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] for r in suite["latency"]["rows"])
    assert [r["image"] for r in suite["render"]["rows"]] == [None, 32]
    e2e = suite["e2e"]
    assert e2e["episodes"] == 2 and 0 <= e2e["successes"] <= 2
    assert set(e2e["stage_wall_s"]) == {"collect", "train + eval"}
    assert "### targets" in md and "cache pipeline ≥ 80 % of encoder-only" in md


def test_a_failing_or_slow_part_is_reported_and_the_others_still_run(tmp_path, monkeypatch):
    gpu_suite = load_suite()
    sizes = {**gpu_suite.SIZES["smoke"]}
    sizes["timeouts"] = {**sizes["timeouts"], "render": 0.01}  # the parent enforces timeouts
    monkeypatch.setitem(gpu_suite.SIZES, "smoke", sizes)
    # the cache part fails in its own process: there is no device cuda:99 here
    suite = gpu_suite.run_suite(["render", "cache"], True, "cuda:99", tmp_path)
    assert suite["render"]["status"] == "timed out after 0.01 s"
    assert suite["cache"]["status"] == "failed"
    assert "no CUDA GPU is visible" in suite["cache"]["error"]
    md = (tmp_path / "gpu_suite.md").read_text()
    assert "### render — timed out after 0.01 s" in md and "### cache — " in md
    assert json.loads((tmp_path / "gpu_suite.json").read_text())["cache"]["status"] != "ok"


def test_targets_read_met_and_missed():
    gpu_suite = load_suite()

    def enc(batch, variant, ratio, mfu):
        return {"batch": batch, "variant": variant, "vs_s2wrapper": ratio, "mfu": mfu}

    suite = {
        "encoder": {
            "status": "ok",
            "rows": [
                enc(1, "S² batched", 1.5, 0.1),
                enc(8, "S² batched", 1.2, 0.2),
                enc(256, "S² batched", 1.05, 0.45),
                enc(256, "s2wrapper", 1.0, 0.4),
            ],
        },
        "cache": {"status": "ok", "pipeline_over_encoder": 0.85},
        "train": {"status": "ok", "rows": [{"cached_over_reencode": 30.0}]},
        "latency": {
            "status": "ok",
            "rows": [
                {"policy": "diffusion DDIM 16", "device": "cuda", "p50_ms": 20.0},
                {"policy": "diffusion DDIM 8", "device": "cuda", "p50_ms": 12.0},
                {"policy": "diffusion DDIM 4", "device": "cuda", "p50_ms": 7.0},
            ],
        },
    }
    got = {t: (m, ok) for t, m, ok in gpu_suite.targets(suite)}
    assert got["S² batched ≥ 1.3× s2wrapper at batch ≤ 8"] == ("1.20×", False)
    assert got["not slower than s2wrapper at batch 256"] == ("1.05×", True)
    assert got["MFU ≥ 40 % at batch 256"] == ("45.0%", True)
    assert got["cache pipeline ≥ 80 % of encoder-only"] == ("85.0%", True)
    assert got["training on cached features ≥ 20× re-encoding"] == ("30.0×", True)
    assert got["S² vit_b + diffusion p50 ≤ 15 ms"] == ("diffusion DDIM 8: p50 12.0 ms", True)
    suite["encoder"] = {"status": "timed out after 150 s"}
    assert not any("s2wrapper" in t for t, _, _ in gpu_suite.targets(suite))
    assert gpu_suite.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert gpu_suite.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu_suite.peak_tflops("Intel CPU") is None
