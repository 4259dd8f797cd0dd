"""Every benchmark script runs in its ``--quick`` mode and prints its table: the rows it promises,
each with a positive measurement. (Smoke tests: the figures themselves are the README's.)"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NUMBER = r"(\d+\.\d+)"

#: script -> the lines its table must have (regular expressions; groups: measurements, the
#: first of them > 0: a rate, a success rate).
TABLES = {
    "cache_pipeline.py": [
        r"vit_micro scales \[64, 128\]; 128 frames 96x96; batch 64",
        rf"^encoder only +{NUMBER}$",
        rf"^cache pipeline \(end to end\) +{NUMBER}$",
        rf"^pipeline / encoder-only: {NUMBER}%$",
    ],
    "encoder_throughput.py": [
        r"backbone vit_micro; scales \[64, 128\]; batch 8",
        r"^encoder +img/s +GFLOPs/img +vs reference",
        rf"^single scale 64 +{NUMBER} +{NUMBER} *$",
        rf"^s2wrapper.forward \(reference\) +{NUMBER} +{NUMBER} +1.00x$",
        rf"^ours, plain bicubic \(as reference\) +{NUMBER} +{NUMBER} +{NUMBER}x$",
        rf"^ours, antialiased \(default\) +{NUMBER} +{NUMBER} +{NUMBER}x$",
    ],
    "env_speed.py": [
        rf"^physics \(mj_step\) +- +- +{NUMBER} *$",
        rf"^control step \(\d+ mj_step\), state only +- +- +{NUMBER} +1.000x$",
        *(
            rf"^control step \+ front & wrist render +{size}x{size} +{shadow} +{NUMBER} +{NUMBER}x$"
            for size in (96, 224)
            for shadow in (0, 512, 1024)
        ),
    ],
    "expert_success.py": [
        r"^task cube_pick, seeds 0\.\.4, state-only rollouts, randomization off$",
        *(
            rf"^ +{noise} +{NUMBER}% \[{NUMBER}, {NUMBER}\] \(\d/5\) +{NUMBER} +{NUMBER}$"
            for noise in ("0.00", "0.30")
        ),
    ],
    "inference_latency.py": [
        rf"^vit_micro S² \(64, 128\) \+ MLP +cpu +{NUMBER} +{NUMBER} +{NUMBER} +{NUMBER} ",
        rf"^vit_micro S² \(64, 128\) \+ diffusion 16 DDIM +cpu +{NUMBER} +{NUMBER} +{NUMBER} "
        rf"+{NUMBER} ",
    ],
    "train_speed.py": [
        r"diffusion policy; encoder vit_micro scales \[64, 128\]; batch 16",
        rf"^re-encoded images +{NUMBER}$",
        rf"^cached features +{NUMBER}$",
        rf"^cached / re-encoded: {NUMBER}x$",
    ],
}


def test_every_benchmark_is_covered():
    # gpu_suite.py has its own tests (tests/test_gpu_suite.py)
    assert {p.name for p in (ROOT / "benchmarks").glob("*.py")} == set(TABLES) | {"gpu_suite.py"}


#: Scripts with a ``--device`` flag: on the CPU, so the table reads the same on a GPU machine.
ON_CPU = {"cache_pipeline.py", "encoder_throughput.py", "train_speed.py"}


@pytest.mark.parametrize("script", sorted(TABLES))
def test_quick_mode_prints_its_table(script):
    args = ["--quick", *(["--device", "cpu"] if script in ON_CPU else [])]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for pattern in TABLES[script]:
        match = re.search(pattern, out, re.MULTILINE)
        assert match, f"{script}: no line matching {pattern!r} in\n{out}"
        values = [float(g) for g in match.groups()]
        assert all(v >= 0 for v in values) and values[:1] != [0.0], match[0]
