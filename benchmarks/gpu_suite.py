"""The GPU suite: every GPU figure of the README from one command, in one short call.

    python benchmarks/gpu_suite.py --out gpu_results          # on the GPU machine (~6 minutes)
    python benchmarks/gpu_suite.py --smoke --out /tmp/smoke   # tiny sizes, any device (CI)

Parts (each in its own process with its own timeout; one that fails or times out is reported
as such and the others still run):

* ``encoder``: S² ``vit_b`` (224, 448) batched (all tiles in one forward) vs the reference
  ``s2wrapper.forward`` vs single scale, bf16, batch 1 / 8 / 64 / 256: img/s, ratio, MFU (FLOPs
  from ``gflops_per_image()`` / time / the device's dense bf16 peak, stated in the output);
  ``torch.compile`` of the batched S² as a variant;
* ``cache``: zarr read -> encode -> zarr write vs the encoder alone on the same frames;
* ``train``: training samples/s on cached features vs re-encoding every batch;
* ``latency``: observation -> action chunk p50/p95/p99, S² ``vit_b`` + MLP and + diffusion
  (DDIM 16, 8, 4), and the CPU demo encoder;
* ``render``: MuJoCo (EGL) control steps/s with two cameras at 96 and 224 px;
* ``e2e``: cube-pick collect -> cache -> train -> eval on the device: success and wall time.

Writes ``gpu_suite.json`` (every number, the device, the versions) and ``gpu_suite.md`` (the
tables and the issue's targets, met or not) to ``--out``, and prints the markdown last.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]

PARTS = ("encoder", "cache", "train", "latency", "render", "e2e")

#: Where a running part saves the rows it has so far (a part stopped at its timeout keeps them).
_PARTIAL: dict[str, Path] = {}


def save_partial(result: dict[str, Any]) -> None:
    if "out" in _PARTIAL:
        _PARTIAL["out"].write_text(json.dumps({"status": "partial", **result}, default=str))


#: Dense bf16 peak (TFLOP/s, no sparsity) by device-name fragment, from NVIDIA's datasheets.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0}

#: Sizes: ``full`` for the GPU machine (the whole suite inside ~6 minutes on an H100), ``smoke``
#: for a CPU in CI (every code path, tiny models).
SIZES: dict[str, dict[str, Any]] = {
    "full": {
        "backbone": "vit_b",
        "scales": (224, 448),
        "batches": (1, 8, 64, 256),
        "seconds": 2.0,
        "compile": True,
        "compile_batches": (8, 256),
        "cache_steps": 4096,
        "cache_batch": 256,
        "image_size": 224,
        "train_batch": 256,
        "train_steps": 600,
        "latency_repeats": 50,
        "ddim_steps": (16, 8, 4),
        "render_sizes": (96, 224),
        "render_seconds": 3.0,
        "e2e": {
            "demos": 100,
            "encoder": "vit_b_s2",
            "train": "gpu",
            "steps": 1500,
            "episodes": 50,
            "n_envs": 10,
        },
        "timeouts": {
            "encoder": 120,
            "cache": 45,
            "train": 60,
            "latency": 60,
            "render": 40,
            "e2e": 120,
        },
    },
    "smoke": {
        "backbone": "vit_nano",
        "scales": (32, 64),
        "batches": (1, 2),
        "seconds": 0.2,
        "compile": False,
        "compile_batches": (),
        "cache_steps": 64,
        "cache_batch": 16,
        "image_size": 32,
        "train_batch": 8,
        "train_steps": 100,
        "latency_repeats": 3,
        "ddim_steps": (16, 4),
        "render_sizes": (32,),
        "render_seconds": 0.2,
        "e2e": {
            "demos": 3,
            "encoder": "nano_s2",
            "train": "cpu",
            "steps": 10,
            "episodes": 2,
            "n_envs": 1,
        },
        "timeouts": {
            "encoder": 120,
            "cache": 120,
            "train": 120,
            "latency": 120,
            "render": 120,
            "e2e": 240,
        },
    },
}


def peak_tflops(device_name: str) -> float | None:
    for fragment, peak in PEAK_BF16_TFLOPS.items():
        if fragment in device_name:
            return peak
    return None


# ---------------------------------------------------------------------------------------- parts
def part_encoder(sz: dict[str, Any], device, dtype: str) -> dict[str, Any]:
    import torch
    from encoder_throughput import images_per_s, reference_fn

    from s2policy.encoders.s2 import EncoderConfig, build_encoder

    scales = tuple(sz["scales"])

    def make(scales_):
        cfg = EncoderConfig(backbone=sz["backbone"], scales=scales_)
        return build_encoder(cfg).to(device).eval()

    single, ours = make(scales[:1]), make(scales)
    reference = reference_fn(ours, scales)
    variants = [("single scale", single, single.gflops_per_image()), ("s2wrapper", reference, None)]
    variants.append(("S² batched", ours, None))
    notes = []
    compiled = None
    if sz["compile"] and device.type == "cuda":
        # the backbone's forward_features is what S² calls (one call for every tile)
        compiled = make(scales)
        compiled.backbone.forward_features = torch.compile(
            compiled.backbone.forward_features, dynamic=False
        )
    gflops_s2 = ours.gflops_per_image()
    name = describe(device)
    peak = peak_tflops(name)
    rows = []
    for batch in sz["batches"]:
        images = torch.rand(batch, 3, scales[0], scales[0], device=device)
        rates = {}
        here = list(variants)
        if compiled is not None and batch in sz["compile_batches"]:
            here.append(("S² batched + torch.compile", compiled, None))
        for label, fn, gflops in here:
            t0 = time.perf_counter()
            try:
                rate = images_per_s(fn, images, dtype, device, sz["seconds"])
            except Exception as exc:  # e.g. torch.compile without a working compiler
                if fn is not compiled:
                    raise
                notes.append(f"torch.compile failed: {type(exc).__name__}: {exc}"[:500])
                compiled = None
                continue
            rates[label] = rate
            g = gflops or gflops_s2
            rows.append(
                {
                    "batch": batch,
                    "variant": label,
                    "img_per_s": rate,
                    "gflops_per_img": g,
                    "tflops": rate * g / 1e3,
                    "mfu": rate * g / (peak * 1e3) if peak else None,
                    "row_wall_s": time.perf_counter() - t0,
                }
            )
        for r in rows:
            if r["batch"] == batch:
                r["vs_s2wrapper"] = r["img_per_s"] / rates["s2wrapper"]
        save_partial({"backbone": sz["backbone"], "scales": list(scales), "rows": rows})
    if device.type == "cuda" and not sz["compile"]:
        notes.append("torch.compile variant skipped")
    return {
        "backbone": sz["backbone"],
        "scales": list(scales),
        "dtype": dtype,
        "peak_bf16_tflops": peak,
        "params_M": ours.backbone_cfg["params"] / 1e6,
        "rows": rows,
        "notes": notes,
    }


def part_cache(sz: dict[str, Any], device, dtype: str) -> dict[str, Any]:
    from cache_pipeline import measure

    m = measure(
        sz["backbone"],
        tuple(sz["scales"]),
        sz["image_size"],
        sz["cache_steps"],
        sz["cache_batch"],
        256,
        device,
        dtype,
    )
    return {"frames": sz["cache_steps"], "batch": sz["cache_batch"], "dtype": dtype, **m}


def part_train(sz: dict[str, Any], device, dtype: str) -> dict[str, Any]:
    from train_speed import measure

    rows = []
    for policy in ("mlp", "diffusion"):
        m = measure(
            sz["backbone"],
            tuple(sz["scales"]),
            sz["image_size"],
            policy,
            sz["train_batch"],
            sz["train_steps"],
            sz["seconds"],
            device,
            dtype,
        )
        rows.append({"policy": policy, "batch": sz["train_batch"], **m})
    return {"dtype": dtype, "rows": rows}


def part_latency(sz: dict[str, Any], device, dtype: str) -> dict[str, Any]:
    import numpy as np
    import torch
    from inference_latency import build, timings

    from s2policy.runtime import autocast

    cpu, big = torch.device("cpu"), (sz["backbone"], tuple(sz["scales"]))
    size = sz["image_size"]
    configs = [(*big, "mlp", None, device, dtype, size)]
    configs += [(*big, "diffusion", n, device, dtype, size) for n in sz["ddim_steps"]]
    configs.append(("vit_micro", (64, 128), "mlp", None, cpu, "float32", 96))  # the CPU demo
    rows = []
    for backbone, scales, policy, steps, dev, dt, size in configs:
        runner, history = build(backbone, scales, policy, dev, dt, size)
        if steps is not None:
            runner.policy.set_inference_steps(steps)
        with autocast(dev, dt):
            times = timings(runner, history, dev, sz["latency_repeats"])
        stats = {f"p{q}_ms": float(np.percentile(times, q)) for q in (50, 95, 99)}
        rows.append(
            {
                "encoder": f"{backbone} S² {list(scales)}",
                "policy": policy + (f" DDIM {steps}" if steps else ""),
                "device": dev.type,
                "dtype": dt,
                "image_size": size,
                **stats,
            }
        )
    return {"rows": rows}


def part_render(sz: dict[str, Any], device, dtype: str) -> dict[str, Any]:
    from env_speed import control_steps_per_s

    seconds = sz["render_seconds"]
    base = control_steps_per_s(seconds, cameras=())
    rows = [{"what": "state only", "image": None, "steps_per_s": base}]
    for size in sz["render_sizes"]:
        rate = control_steps_per_s(
            seconds, image_size=(size, size), cameras=("front", "wrist"), shadow_size=512
        )
        rows.append({"what": "front + wrist", "image": size, "steps_per_s": rate})
    return {"mujoco_gl": os.environ.get("MUJOCO_GL"), "rows": rows}


def part_e2e(sz: dict[str, Any], device, dtype: str) -> dict[str, Any]:
    e = sz["e2e"]
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        store, run = Path(tmp) / "e2e.zarr", Path(tmp) / "run"
        stages = {}
        commands = {
            "collect": [
                py,
                "collect_demos.py",
                "task=cube_pick",
                f"n_episodes={e['demos']}",
                f"output={store}",
                f"hydra.run.dir={tmp}/collect_log",
            ],
            "train + eval": [
                py,
                "train_policy.py",
                f"dataset={store}",
                f"encoder={e['encoder']}",
                "policy=mlp",
                f"train={e['train']}",
                f"train.device={device.type}",
                f"train.steps={e['steps']}",
                "train.val_every=500",
                "train.ckpt_every=100000",
                "eval.enabled=true",
                f"eval.n_episodes={e['episodes']}",
                f"eval.n_envs={e['n_envs']}",
                "eval.n_videos=0",
                f"eval.device={device.type}",
                f"output_dir={run}",
                f"hydra.run.dir={run}",
            ],
        }
        for stage, cmd in commands.items():
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            stages[stage] = time.perf_counter() - t0
            if proc.returncode != 0:
                raise RuntimeError(f"{stage} failed: {proc.stderr[-1500:]}")
        results = json.loads((run / "eval" / "results.json").read_text())
        log = (run / "metrics.jsonl").read_text().splitlines()
    last = json.loads(log[-1]) if log else {}
    return {
        "demos": e["demos"],
        "encoder": e["encoder"],
        "train_steps": e["steps"],
        "episodes": results["n_episodes"],
        "successes": results["successes"],
        "success_rate": results["success_rate"],
        "ci95": results["ci95"],
        "final_train_loss": last.get("train_loss"),
        "stage_wall_s": stages,
        "wall_s": sum(stages.values()),
    }


# ------------------------------------------------------------------------------------ plumbing
def describe(device) -> str:
    from s2policy.runtime import describe_device

    return describe_device(device)


def run_part(name: str, smoke: bool, device_arg: str, out: Path) -> None:
    """Child process: one part, its result (or its error) as JSON in ``out``."""
    import torch

    from s2policy.runtime import resolve_device, resolve_dtype

    sz = SIZES["smoke" if smoke else "full"]
    _PARTIAL["out"] = out
    t0 = time.perf_counter()
    try:
        device = resolve_device(device_arg)
        result = {"status": "ok", **PART_FNS[name](sz, device, resolve_dtype("auto", device))}
        result["device"] = describe(device)
        if device.type == "cuda":
            result["max_memory_GiB"] = torch.cuda.max_memory_allocated() / 2**30
    except Exception as exc:  # reported in the suite's table; the other parts still run
        result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[-2000:]}
    result["wall_s"] = result.get("wall_s", time.perf_counter() - t0)
    out.write_text(json.dumps(result, indent=1, default=str))


PART_FNS = {
    "encoder": part_encoder,
    "cache": part_cache,
    "train": part_train,
    "latency": part_latency,
    "render": part_render,
    "e2e": part_e2e,
}


def environment() -> dict[str, Any]:
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu_count": os.cpu_count(),
        "mujoco_gl": os.environ.get("MUJOCO_GL"),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["peak_bf16_tflops"] = peak_tflops(info["gpu"])
    for module in ("timm", "mujoco", "zarr", "diffusers"):
        try:
            info[module] = __import__(module).__version__
        except Exception as exc:  # a missing module is what the prepare step must fix
            info[module] = f"missing ({type(exc).__name__})"
    return info


def run_suite(parts: list[str], smoke: bool, device: str, out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    sz = SIZES["smoke" if smoke else "full"]
    suite: dict[str, Any] = {"mode": "smoke" if smoke else "full", "env": environment()}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in parts:
            part_file = Path(tmp) / f"{name}.json"
            cmd = [sys.executable, __file__, "--part", name, "--device", device]
            cmd += ["--out", str(part_file)] + (["--smoke"] if smoke else [])
            t0 = time.perf_counter()
            print(f"[gpu_suite] {name} ...", flush=True)
            # its own process group: a timeout also ends what it started (the e2e commands)
            proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
            try:
                _, stderr = proc.communicate(timeout=sz["timeouts"][name])
                if part_file.exists():
                    result = json.loads(part_file.read_text())
                else:
                    result = {"status": "crashed", "error": stderr[-2000:]}
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                result = json.loads(part_file.read_text()) if part_file.exists() else {}
                kept = " (rows so far kept)" if result.get("rows") else ""
                result["status"] = f"timed out after {sz['timeouts'][name]} s{kept}"
            result["part_wall_s"] = time.perf_counter() - t0
            suite[name] = result
            print(f"[gpu_suite] {name}: {result['status']} ({result['part_wall_s']:.0f} s)")
            (out / "gpu_suite.json").write_text(json.dumps(suite, indent=1, default=str))
    suite["total_wall_s"] = time.perf_counter() - start
    (out / "gpu_suite.json").write_text(json.dumps(suite, indent=1, default=str))
    (out / "gpu_suite.md").write_text(to_markdown(suite))
    return suite


# ------------------------------------------------------------------------------------ markdown
def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _f(v, fmt="{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def targets(suite: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for each of the issue's targets that the suite measured."""
    out: list[tuple[str, str, bool | None]] = []
    enc = suite.get("encoder", {})
    if enc.get("status") == "ok":
        ours = {r["batch"]: r for r in enc["rows"] if r["variant"] == "S² batched"}
        small = [b for b in ours if b <= 8]
        if small:
            worst = min(ours[b]["vs_s2wrapper"] for b in small)
            out.append(("S² batched ≥ 1.3× s2wrapper at batch ≤ 8", f"{worst:.2f}×", worst >= 1.3))
        big = max(ours)
        ratio = ours[big]["vs_s2wrapper"]
        out.append((f"not slower than s2wrapper at batch {big}", f"{ratio:.2f}×", ratio >= 1.0))
        mfu = ours[big]["mfu"]
        out.append(
            (f"MFU ≥ 40 % at batch {big}", _f(mfu, "{:.1%}"), None if mfu is None else mfu >= 0.4)
        )
    cache = suite.get("cache", {})
    if cache.get("status") == "ok":
        r = cache["pipeline_over_encoder"]
        out.append(("cache pipeline ≥ 80 % of encoder-only", f"{r:.1%}", r >= 0.8))
    train = suite.get("train", {})
    if train.get("status") == "ok":
        r = min(row["cached_over_reencode"] for row in train["rows"])
        out.append(("training on cached features ≥ 20× re-encoding", f"{r:.1f}×", r >= 20))
    lat = suite.get("latency", {})
    if lat.get("status") == "ok":
        diffusion = [
            r for r in lat["rows"] if r["policy"].startswith("diffusion") and r["device"] != "cpu"
        ]
        met = [r for r in diffusion if r["p50_ms"] <= 15]
        best = max(met, key=lambda r: int(r["policy"].split()[-1])) if met else None
        measured = (
            f"{best['policy']}: p50 {best['p50_ms']:.1f} ms"
            if best
            else ", ".join(f"{r['policy']} {r['p50_ms']:.1f} ms" for r in diffusion)
        )
        out.append(
            ("S² vit_b + diffusion p50 ≤ 15 ms", measured, bool(best) if diffusion else None)
        )
    return out


def to_markdown(suite: dict[str, Any]) -> str:
    env = suite["env"]
    md = [
        f"## GPU suite ({suite['mode']}): {env.get('gpu', 'no GPU')}, torch {env['torch']}, "
        f"CUDA {env['cuda']}, {env['cpu_count']} CPU cores; total {suite['total_wall_s']:.0f} s\n"
    ]
    if env.get("gpu"):
        md.append(
            f"MFU against a dense bf16 peak of {_f(env.get('peak_bf16_tflops'), '{:.0f}')} "
            "TFLOP/s (NVIDIA datasheet, no sparsity).\n"
        )
    for name in PARTS:
        part = suite.get(name)
        if part is None:
            continue
        md.append(f"### {name} — {part['status']}, {part['part_wall_s']:.0f} s\n")
        if part["status"] != "ok":
            if part.get("error"):
                md.append("```\n" + str(part["error"])[-1500:] + "\n```\n")
            if name != "encoder" or not part.get("rows"):
                continue  # an encoder part stopped at its timeout still shows its rows
        if name == "encoder":
            params = part.get("params_M")
            md.append(
                f"{part['backbone']} {part['scales']}, {part.get('dtype', '')}, "
                f"{'-' if params is None else f'{params:.1f}'} M parameters\n\n"
            )
            md.extend(f"note: {n}\n" for n in part.get("notes", []))
            md.append(
                _table(
                    ["batch", "variant", "img/s", "GFLOPs/img", "vs s2wrapper", "MFU"],
                    [
                        [
                            r["batch"],
                            r["variant"],
                            f"{r['img_per_s']:.1f}",
                            f"{r['gflops_per_img']:.3g}",
                            _f(r.get("vs_s2wrapper"), "{:.2f}×"),
                            _f(r["mfu"], "{:.1%}"),
                        ]
                        for r in part["rows"]
                    ],
                )
            )
        elif name == "cache":
            md.append(
                _table(
                    ["frames", "batch", "encoder only (frames/s)", "pipeline (frames/s)", "ratio"],
                    [
                        [
                            part["frames"],
                            part["batch"],
                            f"{part['encoder_only_fps']:.1f}",
                            f"{part['pipeline_fps']:.1f}",
                            f"{part['pipeline_over_encoder']:.1%}",
                        ]
                    ],
                )
            )
        elif name == "train":
            md.append(
                _table(
                    ["policy", "batch", "cached (samples/s)", "re-encoded (samples/s)", "ratio"],
                    [
                        [
                            r["policy"],
                            r["batch"],
                            f"{r['cached_sps']:.0f}",
                            f"{r['reencode_sps']:.0f}",
                            f"{r['cached_over_reencode']:.1f}×",
                        ]
                        for r in part["rows"]
                    ],
                )
            )
        elif name == "latency":
            md.append(
                _table(
                    ["encoder", "policy", "device", "image", "p50 ms", "p95 ms", "p99 ms"],
                    [
                        [
                            r["encoder"],
                            r["policy"],
                            r["device"],
                            r["image_size"],
                            f"{r['p50_ms']:.1f}",
                            f"{r['p95_ms']:.1f}",
                            f"{r['p99_ms']:.1f}",
                        ]
                        for r in part["rows"]
                    ],
                )
            )
        elif name == "render":
            md.append(
                _table(
                    ["what", "image", "steps/s"],
                    [
                        [r["what"], r["image"] or "-", f"{r['steps_per_s']:.1f}"]
                        for r in part["rows"]
                    ],
                )
                + f"\nMUJOCO_GL={part['mujoco_gl']}\n"
            )
        elif name == "e2e":
            lo, hi = part["ci95"]
            md.append(
                _table(
                    ["demos", "encoder", "steps", "success [95% CI]", "wall s (stages)"],
                    [
                        [
                            part["demos"],
                            part["encoder"],
                            part["train_steps"],
                            f"{part['successes']}/{part['episodes']} = "
                            f"{100 * part['success_rate']:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}]",
                            f"{part['wall_s']:.0f} ("
                            + ", ".join(f"{k} {v:.0f}" for k, v in part["stage_wall_s"].items())
                            + ")",
                        ]
                    ],
                )
            )
    rows = [
        [t, m, "-" if ok is None else ("met" if ok else "MISSED")] for t, m, ok in targets(suite)
    ]
    if rows:
        md.append("### targets\n")
        if suite["mode"] == "smoke":
            md.append("(smoke sizes: the targets are for the full run on a GPU)\n")
        md.append(_table(["target", "measured", ""], rows))
    return "\n".join(md)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the results")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CPU, CI)")
    parser.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()
    if args.part:
        run_part(args.part, args.smoke, args.device, args.out)
        return
    suite = run_suite(args.parts, args.smoke, args.device, args.out)
    print(to_markdown(suite))
    failed = [p for p in args.parts if suite[p]["status"] != "ok"]
    if failed:
        print(f"[gpu_suite] parts not ok: {failed}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
