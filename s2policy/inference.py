"""Running a checkpoint on live observations: the encoder exactly as the cache ran it, and one
batched encoder + policy call from observation histories to executable action chunks. Shared by
evaluation (many environments) and the robot loop (one robot)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from s2policy.encoders.s2 import EncoderConfig, S2Encoder, build_encoder
from s2policy.features.cache import encode_frames, stored


class LiveEncoder:
    """A frozen encoder applied to live frames exactly as the feature cache applies it."""

    def __init__(self, encoder: S2Encoder, dtype: str = "float32"):
        self.encoder, self.dtype = encoder, dtype
        self.device = next(encoder.parameters()).device

    @classmethod
    def from_checkpoint(cls, info: dict[str, Any], device: torch.device) -> LiveEncoder:
        """The checkpoint's encoder, rebuilt and checked against the spec it was trained with."""
        meta = info["encoder"]
        encoder = build_encoder(EncoderConfig(**meta["config"])).to(device)
        spec = encoder.spec()
        if spec != meta["spec"]:
            keys = sorted(k for k in spec if spec[k] != meta["spec"].get(k))
            raise ValueError(
                f"the live encoder differs from the one this policy was trained on in {keys} "
                "(did the weights file change?); retrain or restore the weights"
            )
        return cls(encoder, meta["dtype"])

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 ``(N, H, W, 3)`` -> features ``(N, ...)`` exactly as the cache stores them."""
        feats = stored(encode_frames(self.encoder, frames, len(frames), self.dtype, self.device))
        return torch.from_numpy(feats.astype(np.float32)).to(self.device)


@torch.no_grad()
def infer(
    policy,
    live: LiveEncoder | None,
    histories: list,
    generators: list[torch.Generator | None],
    device: torch.device,
    latency: dict[str, list[float]],
    predict_kw: dict[str, Any] | None = None,
) -> list[np.ndarray]:
    """Executable action chunks ``(n_action_steps, A)``, one per observation history (each a
    sequence of ``n_obs_steps`` observation dicts), from one batched encoder call (histories x
    steps x cameras) and one batched policy call; their times are appended to ``latency``."""
    cameras = list(policy.shape_meta["features"])
    n, n_obs = len(histories), policy.cfg.n_obs_steps
    obs: dict[str, torch.Tensor] = {}
    if cameras:
        frames = np.stack([np.stack([h[c] for h in hist]) for c in cameras for hist in histories])
        t0 = time.perf_counter()
        feats = live(frames.reshape(-1, *frames.shape[2:]))  # (C*n*T, ...)
        latency["encoder_ms"].append(1e3 * (time.perf_counter() - t0))
        feats = feats.view(len(cameras), n, n_obs, *feats.shape[1:])
        obs = {c: feats[k] for k, c in enumerate(cameras)}
    obs["state"] = torch.from_numpy(
        np.stack([np.stack([h["state"] for h in hist]) for hist in histories])
    ).to(device)
    t0 = time.perf_counter()
    kw = dict(predict_kw or {})
    if policy.name == "diffusion":
        kw["generator"] = generators if all(g is not None for g in generators) else None
    chunk = policy.executable(policy.predict_action(obs, **kw))
    latency["policy_ms"].append(1e3 * (time.perf_counter() - t0))
    return list(chunk.float().cpu().numpy())
