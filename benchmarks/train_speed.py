"""Training throughput on cached features vs re-encoding images every batch (diffusion_policy's
way with a frozen encoder), same policy, batch and machine, measured in this one run.

    python benchmarks/train_speed.py                          # vit_micro S² (64, 128), CPU
    python benchmarks/train_speed.py --backbone vit_b --scales 224 448 --image-size 224 --batch 256
    python benchmarks/train_speed.py --quick                  # 100 frames, batch 16, 0.5 s rows
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
from s2policy.features.cache import build_cache
from s2policy.policies import make_policy
from s2policy.policies.diffusion import DiffusionPolicyConfig
from s2policy.policies.mlp import MLPPolicyConfig
from s2policy.runtime import autocast, describe_device, resolve_device
from s2policy.training.dataset import CachedFeatureData, WindowSpec
from s2policy.training.loop import fit_normalizer

CAMERAS = ["front", "wrist"]


def steps_per_s(step, min_seconds: float, device) -> float:
    step()  # warm-up
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds or n < 2:
        step()
        n += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def measure(
    backbone: str,
    scales: tuple[int, ...],
    image_size: int,
    policy_name: str,
    batch: int,
    steps: int,
    seconds: float,
    device: torch.device,
    dtype: str = "float32",
) -> dict[str, float]:
    """Training samples/s on cached features and on images re-encoded every batch (same policy,
    batch, machine, autocast ``dtype``), in this one run."""
    encoder = build_encoder(EncoderConfig(backbone=backbone, scales=tuple(scales))).to(device)
    pcfg = MLPPolicyConfig() if policy_name == "mlp" else DiffusionPolicyConfig()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        buf = ReplayBuffer.create(Path(tmp) / "bench.zarr", attrs={"cameras": CAMERAS})
        for _ in range(max(1, steps // 50)):
            size = (50, image_size, image_size, 3)
            buf.add_episode(
                {
                    **{c: rng.integers(0, 256, size, np.uint8) for c in CAMERAS},
                    "state": rng.normal(size=(50, 5)).astype(np.float32),
                    "action": rng.uniform(-1, 1, (50, 5)).astype(np.float32),
                }
            )
        cache = build_cache(buf.path, encoder, CAMERAS, batch_size=64, dtype=dtype)
        data = CachedFeatureData(
            str(buf.path),
            cache,
            CAMERAS,
            WindowSpec(pcfg.n_obs_steps, pcfg.horizon, pcfg.n_action_steps),
            0.0,
            0,
            device,
        )
        frames = {c: torch.from_numpy(buf[c][:]).to(device) for c in CAMERAS}
        policy = make_policy(pcfg, data.shape_meta, fit_normalizer(data, True)).to(device)
        opt = torch.optim.AdamW(policy.parameters(), lr=1e-4)
        gen = torch.Generator().manual_seed(0)

        def update(batch_):
            with autocast(device, dtype):
                loss = policy(batch_, generator=torch.Generator(device).manual_seed(0))
            opt.zero_grad()
            loss.backward()
            opt.step()

        def cached_step():
            update(data.sample(batch, gen))

        def reencode_step():
            rows = torch.randint(0, len(data), (batch,), generator=gen)
            batch_ = data.batch("train", rows)
            obs_idx = data.index["train"][rows][:, : pcfg.n_obs_steps].to(device)
            with torch.no_grad(), autocast(device, dtype):
                for cam in CAMERAS:  # the frozen encoder on every observation frame, every batch
                    images = frames_to_tensor(frames[cam][obs_idx.flatten()], device)
                    batch_["obs"][cam] = encoder(images).float().view(*obs_idx.shape, -1)
            update(batch_)

        cached = steps_per_s(cached_step, seconds, device) * batch
        reencode = steps_per_s(reencode_step, seconds, device) * batch
    return {
        "cached_sps": cached,
        "reencode_sps": reencode,
        "cached_over_reencode": cached / reencode,
        "n_obs_steps": pcfg.n_obs_steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="vit_micro")
    parser.add_argument("--scales", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--policy", choices=["mlp", "diffusion"], default="diffusion")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=600, help="frames in the temporary store")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="100 frames, batch 16, 0.5 s rows")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.batch, args.seconds = 100, 16, 0.5
    device = resolve_device(args.device)
    m = measure(
        args.backbone,
        tuple(args.scales),
        args.image_size,
        args.policy,
        args.batch,
        args.steps,
        args.seconds,
        device,
    )
    name = describe_device(device)
    print(
        f"device: {name}; fp32; {args.policy} policy; encoder {args.backbone} scales "
        f"{args.scales}; batch {args.batch}; {m['n_obs_steps']} obs steps x {len(CAMERAS)} cameras"
    )
    print(f"{'training on':28s} {'samples/s':>10s}")
    print(f"{'re-encoded images':28s} {m['reencode_sps']:10.1f}")
    print(f"{'cached features':28s} {m['cached_sps']:10.1f}")
    print(f"cached / re-encoded: {m['cached_over_reencode']:.1f}x")


if __name__ == "__main__":
    main()
