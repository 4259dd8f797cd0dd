"""Feature-cache pipeline throughput as a fraction of encoder-only throughput.

    python benchmarks/cache_pipeline.py --backbone vit_micro --scales 64 128 --steps 512
    python benchmarks/cache_pipeline.py --backbone vit_b --scales 224 448 --batch 256  # GPU

Builds a temporary store of random frames, then measures in this one run (same encoder, batch,
dtype): (a) the encoder alone on frames already on the device, (b) ``build_cache`` end to end
(zarr reads and decompression with prefetching, uint8 -> float, host -> device, encoding,
float16 writes). Prints (b) / (a).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from s2policy.data.store import ReplayBuffer
from s2policy.encoders.preprocess import frames_to_tensor
from s2policy.encoders.s2 import EncoderConfig, build_encoder
from s2policy.features.cache import DTYPES, build_cache
from s2policy.runtime import describe_device, resolve_device, resolve_dtype


def measure(
    backbone: str,
    scales: tuple[int, ...],
    image_size: int,
    steps: int,
    batch: int,
    chunk_steps: int,
    device: torch.device,
    dtype: str,
) -> dict[str, float]:
    """Frames/s of (a) the encoder alone and (b) ``build_cache`` end to end, in this one run."""
    enc = build_encoder(EncoderConfig(backbone=backbone, scales=tuple(scales))).to(device)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (steps, image_size, image_size, 3), np.uint8)

    # (a) encoder only: frames already converted and resident on the device
    images = frames_to_tensor(frames, device)
    with (
        torch.inference_mode(),
        torch.autocast(device.type, DTYPES[dtype], enabled=dtype != "float32"),
    ):
        for i in range(0, steps, batch):  # warm-up pass
            enc(images[i : i + batch])
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for i in range(0, steps, batch):
            enc(images[i : i + batch])
        if device.type == "cuda":
            torch.cuda.synchronize()
    encoder_only = steps / (time.perf_counter() - start)

    # (b) the cache build, end to end
    with tempfile.TemporaryDirectory() as tmp:
        buf = ReplayBuffer.create(Path(tmp) / "bench.zarr", attrs={"cameras": ["front"]})
        for ep in np.array_split(np.arange(steps), max(1, steps // 50)):
            buf.add_episode({"front": frames[ep], "action": np.zeros((len(ep), 1), np.float32)})
        start = time.perf_counter()
        build_cache(buf.path, enc, ["front"], batch, chunk_steps, dtype)
        if device.type == "cuda":
            torch.cuda.synchronize()
        pipeline = steps / (time.perf_counter() - start)
    return {
        "encoder_only_fps": encoder_only,
        "pipeline_fps": pipeline,
        "pipeline_over_encoder": pipeline / encoder_only,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="vit_micro")
    parser.add_argument("--scales", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--steps", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--chunk-steps", type=int, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--quick", action="store_true", help="128 steps")
    args = parser.parse_args()
    if args.quick:
        args.steps = 128
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    m = measure(
        args.backbone,
        tuple(args.scales),
        args.image_size,
        args.steps,
        args.batch,
        args.chunk_steps,
        device,
        dtype,
    )
    name = describe_device(device)
    print(
        f"device: {name}; dtype {dtype}; {args.backbone} scales {args.scales}; "
        f"{args.steps} frames {args.image_size}x{args.image_size}; batch {args.batch}"
    )
    print(f"{'what':28s} {'frames/s':>10s}")
    print(f"{'encoder only':28s} {m['encoder_only_fps']:10.1f}")
    print(f"{'cache pipeline (end to end)':28s} {m['pipeline_fps']:10.1f}")
    print(f"pipeline / encoder-only: {m['pipeline_over_encoder']:.1%}")


if __name__ == "__main__":
    main()
