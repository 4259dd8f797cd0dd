"""Observation -> action-chunk latency of the robot loop's inference (live encoder + policy).

    python benchmarks/inference_latency.py                       # tiny configs on CPU
    python benchmarks/inference_latency.py --gpu                 # + S² ViT-B + diffusion (16 DDIM)
    python benchmarks/inference_latency.py --quick               # 3 repeats (CI smoke)

Each row builds an untrained policy of the given shape (latency does not depend on the weights)
and times ``PolicyRunner.predict`` on one observation history (2 steps x 2 cameras),
exactly the call the robot loop's worker makes. Goals: <= 50 ms for the tiny config on 2 CPU
cores, <= 15 ms for S² ViT-B + diffusion on an H100.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from s2policy.data.normalizer import Normalizer
from s2policy.encoders.s2 import EncoderConfig, build_encoder
from s2policy.policies import make_policy
from s2policy.policies.artifact import EncoderInfo, Provenance, TrainedPolicy
from s2policy.policies.diffusion import DiffusionPolicyConfig
from s2policy.policies.mlp import MLPPolicyConfig
from s2policy.policies.runner import PolicyRunner
from s2policy.runtime import autocast, describe_device, resolve_device
from s2policy.task import TaskConfig

CAMERAS = ("front", "wrist")


def build(backbone, scales, policy_name, device, dtype, image_size):
    """A runner of an untrained policy on this encoder (latency does not depend on training)."""
    enc_cfg = EncoderConfig(backbone=backbone, scales=scales)
    encoder = build_encoder(enc_cfg)
    pcfg = (
        MLPPolicyConfig() if policy_name == "mlp" else DiffusionPolicyConfig(num_inference_steps=16)
    )
    dim = encoder.out_dim
    norm = Normalizer()
    norm.fit("action", torch.rand(64, 5) * 2 - 1, "limits")
    norm.fit("state", torch.randn(64, 5), "gaussian")
    for cam in CAMERAS:
        norm.fit(cam, torch.randn(64, dim), "gaussian")
    meta = {"features": {c: [dim] for c in CAMERAS}, "state": [5], "action": [5]}
    policy = make_policy(pcfg, meta, norm)
    trained = TrainedPolicy(
        policy,
        TaskConfig(env={"image_size": (image_size, image_size)}),
        EncoderInfo(enc_cfg, encoder.spec(), dtype),
        Provenance(None, None, None, {}),
        step=0,
        has_ema=False,
        used_ema=False,
        path=Path("."),
    )
    runner = PolicyRunner(trained, 1, device)
    runner.reset([0])
    rng = np.random.default_rng(0)
    history = [
        {
            **{c: rng.integers(0, 256, (image_size, image_size, 3), np.uint8) for c in CAMERAS},
            "state": rng.normal(size=5).astype(np.float32),
        }
        for _ in range(pcfg.n_obs_steps)
    ]
    return runner, history


def timings(runner, history, device, repeats: int, warmup: int = 3) -> list[float]:
    """Milliseconds of ``repeats`` observation -> chunk calls after ``warmup`` untimed ones."""
    times = []
    for i in range(repeats + warmup):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        runner.predict([history], [0])
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(1e3 * (time.perf_counter() - t0))
    return times


def measure(runner, history, device, repeats):
    times, parts = timings(runner, history, device, repeats), runner.latency
    enc = np.median(parts["encoder_ms"][3:]) if parts["encoder_ms"] else 0.0
    return (
        np.percentile(times, 50),
        np.percentile(times, 95),
        enc,
        np.median(parts["policy_ms"][3:]),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="add the S² ViT-B config on the GPU")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="3 timed repeats per row")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 3
    cpu = torch.device("cpu")
    rows = [
        ("vit_micro S² (64, 128) + MLP", "vit_micro", (64, 128), "mlp", cpu, "float32", 96, 50),
        (
            "vit_micro S² (64, 128) + diffusion 16 DDIM",
            "vit_micro",
            (64, 128),
            "diffusion",
            cpu,
            "float32",
            96,
            50,
        ),
    ]
    if args.gpu:
        gpu = resolve_device("cuda")
        rows.append(
            (
                "vit_b S² (224, 448) + diffusion 16 DDIM",
                "vit_b",
                (224, 448),
                "diffusion",
                gpu,
                "bfloat16",
                224,
                15,
            )
        )
    print(
        f"CPU: {describe_device(cpu)}"
        + (f"; GPU: {describe_device(resolve_device('cuda'))}" if args.gpu else "")
    )
    print(
        f"{'configuration':44s} {'device':>6s} {'p50 ms':>8s} {'p95 ms':>8s} {'encoder':>8s} "
        f"{'policy':>8s} {'goal':>6s}"
    )
    for label, backbone, scales, pol, device, dtype, size, goal in rows:
        runner, history = build(backbone, scales, pol, device, dtype, size)
        with autocast(device, dtype):
            p50, p95, enc, pms = measure(runner, history, device, args.repeats)
        ok = "met" if p50 <= goal else "MISSED"
        print(
            f"{label:44s} {device.type:>6s} {p50:8.1f} {p95:8.1f} {enc:8.1f} {pms:8.1f} "
            f"{'<=' + str(goal):>4s} {ok}"
        )


if __name__ == "__main__":
    main()
