"""Encoder throughput: single scale vs our S² vs the reference ``s2wrapper.forward``.

    python benchmarks/encoder_throughput.py --backbone vit_t --scales 224 448        # CPU
    python benchmarks/encoder_throughput.py --backbone vit_b --batch 64 --dtype bfloat16  # GPU
    python benchmarks/encoder_throughput.py --quick

Every row runs the same backbone weights, batch and dtype in this one process; the ratio column
is ours / reference. On a GPU, MFU = achieved FLOP/s / ``--peak-tflops``.
"""

from __future__ import annotations

import argparse
import time

import s2wrapper
import torch

from s2policy.encoders.s2 import EncoderConfig, build_encoder
from s2policy.runtime import describe_device, resolve_device, resolve_dtype


def images_per_s(fn, images, dtype, device, min_seconds: float, warmup: int = 2) -> float:
    with (
        torch.inference_mode(),
        torch.autocast(device.type, dtype=getattr(torch, dtype), enabled=dtype != "float32"),
    ):
        for _ in range(warmup):
            fn(images)
        if device.type == "cuda":
            torch.cuda.synchronize()
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < min_seconds:
            fn(images)
            n += len(images)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def reference_fn(ours, scales):
    """The reference ``s2wrapper.forward`` on ``ours``' backbone and normalization."""

    def reference(x):
        x = (x - ours.mean) / ours.std
        return s2wrapper.forward(
            ours.backbone.forward_features,
            x,
            img_sizes=list(scales),
            num_prefix_token=ours.num_prefix_tokens,
        )

    return reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="vit_t")
    parser.add_argument("--scales", type=int, nargs="+", default=[224, 448])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="H100 SXM dense bf16")
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    parser.add_argument("--quick", action="store_true", help="vit_micro at (64, 128), 1 s rows")
    args = parser.parse_args()
    if args.quick:
        args.backbone, args.scales, args.seconds = "vit_micro", [64, 128], 1.0
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    scales = tuple(args.scales)

    def make(scales_, **kw):
        enc = build_encoder(EncoderConfig(backbone=args.backbone, scales=scales_, **kw)).to(device)
        if args.compile:  # what S² and the reference call (compiling the module would not be)
            enc.backbone.forward_features = torch.compile(enc.backbone.forward_features)
        return enc

    single, ours, ours_ref_resize = make(scales[:1]), make(scales), make(scales, antialias=False)
    images = torch.rand(args.batch, 3, scales[0], scales[0], device=device)

    reference = reference_fn(ours, scales)
    gflops_single, gflops_s2 = single.gflops_per_image(), ours.gflops_per_image()
    rows = [
        (
            f"single scale {scales[0]}",
            images_per_s(single, images, dtype, device, args.seconds),
            gflops_single,
        ),
        (
            "s2wrapper.forward (reference)",
            images_per_s(reference, images, dtype, device, args.seconds),
            gflops_s2,
        ),
        (
            "ours, plain bicubic (as reference)",
            images_per_s(ours_ref_resize, images, dtype, device, args.seconds),
            gflops_s2,
        ),
        (
            "ours, antialiased (default)",
            images_per_s(ours, images, dtype, device, args.seconds),
            gflops_s2,
        ),
    ]
    name = describe_device(device)
    print(
        f"device: {name}; dtype {dtype}; backbone {args.backbone}; scales {list(scales)}; "
        f"batch {args.batch}; params {ours.backbone_cfg['params'] / 1e6:.1f} M"
        f"{'; torch.compile' if args.compile else ''}"
    )
    ref_rate = rows[1][1]
    header = f"{'encoder':36s} {'img/s':>9s} {'GFLOPs/img':>11s} {'vs reference':>13s}"
    print(header + ("  MFU" if device.type == "cuda" else ""))
    for label, rate, gflops in rows:
        ratio = f"{rate / ref_rate:.2f}x" if "single" not in label else ""
        mfu = f"  {rate * gflops / (args.peak_tflops * 1e3):.1%}" if device.type == "cuda" else ""
        print(f"{label:36s} {rate:9.1f} {gflops:11.2f} {ratio:>13s}{mfu}")


if __name__ == "__main__":
    main()
