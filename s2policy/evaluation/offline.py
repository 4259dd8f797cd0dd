"""Offline evaluation: a checkpoint's actions on recorded held-out episodes, for data without a
simulator (a robot's demonstrations) — what a lab compares encoders and scales by before a robot
run. **An action error is not a success rate**: a policy that copies the demonstrations well can
still fail in closed loop (its small errors compound), and one that acts differently from the
demonstrator can still succeed.

For every step of every evaluated episode the policy sees the recorded observation window (the
cached features of the frames, as in training: the plain ones, never the augmented views) and
predicts its chunk; compared with the recorded actions in raw units:

- the *executed* action (the chunk's action for the current step): mean squared and absolute
  error per action dimension, averaged over each episode's steps, then over episodes, with a
  95 % interval over episodes (Student's t, :func:`~s2policy.evaluation.stats.mean_interval`);
- the chunk error by horizon step ``k`` (the prediction for step ``t + k`` made at ``t``; steps past
  the episode's end are left out);
- open-loop plots of a few episodes: recorded vs executed action per dimension, and the chunks
  predicted every few steps.

``results.json`` (``"kind": "offline"``) lands in ``<run>/eval_offline/`` (or ``output_dir``); the
report lists such runs in an offline table of their own.

    python -m s2policy.evaluation.offline checkpoint=outputs/myarm/micro_s2_mlp_seed0
    python -m s2policy.evaluation.offline checkpoint=... dataset=datasets/myarm_day2.zarr
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from s2policy.data.store import ReplayBuffer
from s2policy.encoders.s2 import BLIND, build_encoder
from s2policy.evaluation.stats import mean_interval
from s2policy.policies.artifact import TrainedPolicy, load
from s2policy.runtime import resolve_device

logger = logging.getLogger(__name__)


@dataclass
class OfflineConfig:
    """``configs/offline.yaml``: which checkpoint, on which recorded episodes."""

    #: A run directory or its ``checkpoint/``.
    checkpoint: str = "???"
    #: The store of the episodes; null: the checkpoint's training store.
    dataset: str | None = None
    #: Episodes to evaluate; null: the training run's validation episodes (its own store) or
    #: every episode (another store).
    episodes: list[int] | None = None
    #: Episodes plotted open loop (the first of those evaluated).
    n_plots: int = 3
    #: Windows per policy call.
    batch_size: int = 256
    device: str = "auto"
    use_ema: bool = True
    #: Seed of a stochastic (diffusion) policy's sampling.
    seed: int = 0
    #: DDIM steps of a diffusion policy; null: the checkpoint's.
    num_inference_steps: int | None = None
    #: Where results.json and plots go; null: ``<run>/eval_offline``.
    output_dir: str | None = None
    #: Build the feature cache of another store when missing (as training does).
    build_cache: bool = True

    def __post_init__(self):
        if self.n_plots < 0 or self.batch_size < 1:
            raise ValueError("n_plots must be >= 0 and batch_size >= 1")
        if self.episodes is not None and not self.episodes:
            raise ValueError("episodes must not be an empty list (null: the validation split)")
        if self.episodes is not None and min(self.episodes) < 0:
            raise ValueError(f"episodes must be >= 0, got {self.episodes}")


def _features(trained: TrainedPolicy, store: str, own: bool, build: bool, device):
    """The cache of plain features for the checkpoint's cameras on ``store`` (None: blind or
    the oracle): the training cache itself on the training store."""
    from s2policy.features.cache import build_cache, list_caches, open_cache

    if not trained.cameras:
        return None
    fp = trained.provenance.cache_fingerprint
    if own and fp:  # the training cache, unless the store has changed since it was built
        found = {c.fingerprint: c for c in list_caches(store)}
        steps = ReplayBuffer.open(store).n_steps
        if fp in found and found[fp].complete and found[fp].attrs.get("n_steps") == steps:
            return found[fp]
    encoder = build_encoder(trained.encoder.config).to(device)
    dtype = trained.encoder.dtype
    if build:
        return build_cache(store, encoder, trained.cameras, dtype=dtype)
    return open_cache(store, encoder, trained.cameras, dtype)


def evaluate_offline(cfg: OfflineConfig, trained: TrainedPolicy | None = None) -> dict[str, Any]:
    """Evaluate ``cfg.checkpoint`` on recorded episodes; returns the results (also written)."""
    from s2policy.data.privileged import PRIVILEGED, oracle_features
    from s2policy.data.spec import DataSpec
    from s2policy.training.dataset import CachedFeatureData, WindowSpec

    device = resolve_device(cfg.device)
    trained = trained or load(cfg.checkpoint, cfg.use_ema, device)
    train_cfg = trained.provenance.config.get("train", {})
    store = cfg.dataset or trained.provenance.dataset
    if store is None:
        raise ValueError(f"checkpoint {trained.path} records no dataset; pass dataset=<store>")
    own = (
        cfg.dataset is None
        or Path(cfg.dataset).resolve() == Path(str(trained.provenance.dataset)).resolve()
    )
    buffer = ReplayBuffer.open(store)
    problems = trained.spec.mismatches(DataSpec.from_store(buffer))
    if problems:
        raise ValueError(
            f"{store} does not fit checkpoint {trained.path}: {'; '.join(problems)} "
            f"(checkpoint: {trained.spec.describe()})"
        )
    if cfg.num_inference_steps is not None:
        trained.policy.set_inference_steps(cfg.num_inference_steps)
    pcfg = trained.policy.cfg
    windows = WindowSpec(pcfg.n_obs_steps, pcfg.horizon, pcfg.n_action_steps)
    extra = {}
    if trained.is_oracle:
        keys = trained.oracle_keys
        extra = {PRIVILEGED: oracle_features({k: buffer[k][:] for k in keys}, keys)}
    cache = _features(trained, store, own, cfg.build_cache, device)
    val_ratio = float(train_cfg.get("val_ratio", 0.1)) if own else 0.0
    # the training split: the episodes the store held then (it may have grown since)
    n_demos = (train_cfg.get("n_demos") or trained.provenance.dataset_episodes) if own else None
    data = CachedFeatureData(
        store, cache, list(trained.cameras), windows, val_ratio, int(train_cfg.get("seed", 0)),
        device, extra, n_demos,
    )  # fmt: skip
    if cfg.episodes is not None:
        episodes = [int(e) for e in cfg.episodes]
        bad = [e for e in episodes if e >= buffer.n_episodes]
        if bad:
            raise ValueError(f"episodes {bad} are not in {store} ({buffer.n_episodes} episodes)")
        if own:
            seen = sorted(set(episodes) & set(data.train_episodes.tolist()))
            if seen:
                logger.warning("episodes %s were trained on: their error is not held out", seen)
    elif own:
        episodes = sorted(int(e) for e in data.val_episodes)
        if not episodes:
            raise ValueError(
                f"the run trained on every episode of {store} (train.val_ratio=0): pass "
                "episodes=[...] or another dataset=... to evaluate on"
            )
    else:
        episodes = list(range(buffer.n_episodes))
    result = _predict(trained, data, buffer, episodes, cfg, device)
    out = Path(cfg.output_dir) if cfg.output_dir else trained.run_dir / "eval_offline"
    out.mkdir(parents=True, exist_ok=True)
    plots = _plot(result, out, cfg.n_plots, trained.spec.action_names)
    summary = _summary(result)
    results = {
        "kind": "offline",
        "checkpoint": str(trained.path),
        "task": trained.task.name if trained.task else Path(str(store)).name.removesuffix(".zarr"),
        "policy": trained.policy.name,
        "train_seed": trained.provenance.train_seed,
        "dataset": str(store),
        "demos": trained.provenance.demos,
        "encoder": _encoder_summary(trained),
        "augment_views": int(train_cfg.get("augment", {}).get("views", 0)),
        "spatial_head": getattr(pcfg, "spatial_head", "attention"),
        "horizon": pcfg.horizon,
        "episodes_evaluated": episodes,
        "held_out": own and cfg.episodes is None,
        "offline": summary,
        "plots": [str(p) for p in plots],
        "config": asdict(cfg),
    }
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    results["results_file"] = str(out / "results.json")
    return results


@torch.inference_mode()
def _predict(trained, data, buffer, episodes, cfg, device) -> dict[str, Any]:
    """Per evaluated episode: recorded actions ``(T, A)``, executed predictions ``(T, A)``, the
    squared error of each chunk step ``(T, K, A)`` with its validity mask ``(T, K)``."""
    policy = trained.policy.eval()
    start = policy.cfg.n_obs_steps - 1
    ends = buffer.episode_ends
    gen = torch.Generator(device).manual_seed(cfg.seed) if policy.stochastic else None
    split = data.index  # (n_windows, horizon) global steps per split
    every = torch.cat([split["train"], split["val"]])
    current = every[:, start]
    out = []
    for ep in episodes:
        first, end = (int(ends[ep - 1]) if ep else 0), int(ends[ep])
        rows = torch.nonzero((current >= first) & (current < end)).flatten()
        if len(rows) == 0:  # an episode outside the windows (past n_demos): its own windows
            from s2policy.data.sampler import episode_windows

            win = torch.from_numpy(
                episode_windows(ends, np.array([ep]), policy.cfg.horizon, policy.cfg.n_obs_steps)
            )
        else:
            win = every[rows]
        win = win[torch.argsort(win[:, start])]
        chunks = []
        for s in range(0, len(win), cfg.batch_size):
            part = win[s : s + cfg.batch_size].to(data.device)
            batch = _batch(data, part)
            chunks.append(policy.predict_action(batch, generator=gen).float().cpu())
        chunk = torch.cat(chunks).numpy()  # (T, horizon, A)
        recorded_window = data.arrays["action"][win.to(data.device)].float().cpu().numpy()
        steps = win[:, start].numpy()
        future = steps[:, None] + np.arange(chunk.shape[1] - start)[None, :]
        valid = future < end
        err = (chunk[:, start:] - recorded_window[:, start:]) ** 2
        out.append(
            {
                "episode": ep,
                "recorded": recorded_window[:, start],
                "executed": chunk[:, start],
                "chunks": chunk[:, start:],
                "sq": err,
                "abs": np.sqrt(err),
                "valid": valid,
            }
        )
    return {"episodes": out}


def _batch(data, rows: torch.Tensor) -> dict[str, Any]:
    """The observation windows of rows ``(B, horizon)`` of global steps (plain features)."""
    obs_idx = rows[:, : data.windows.n_obs_steps]
    obs = {cam: data.arrays[cam][obs_idx] for cam in data.cameras}
    obs["state"] = data.arrays["state"][obs_idx]
    return obs


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    eps = result["episodes"]
    mse = np.stack([e["sq"][:, 0].mean(0) for e in eps])  # (E, A): executed action, per episode
    l1 = np.stack([e["abs"][:, 0].mean(0) for e in eps])

    def stat(values: np.ndarray) -> dict[str, Any]:
        mean, low, high = mean_interval(values)
        # an error is never below 0 (an interval of one episode stays NaN)
        return {"mean": mean, "ci95": [low if math.isnan(low) else max(0.0, low), high]}

    by_step = []
    for k in range(eps[0]["sq"].shape[1]):
        sq = [e["sq"][:, k][e["valid"][:, k]] for e in eps]
        n = sum(len(s) for s in sq)
        by_step.append(float(np.concatenate(sq).mean()) if n else None)
    return {
        "episodes": len(eps),
        "steps": int(sum(len(e["executed"]) for e in eps)),
        "action_mse": {**stat(mse.mean(1)), "per_dim": mse.mean(0).tolist()},
        "action_l1": {**stat(l1.mean(1)), "per_dim": l1.mean(0).tolist()},
        # per evaluated episode (the report pools them over training seeds)
        "episode_mse": mse.mean(1).tolist(),
        "episode_l1": l1.mean(1).tolist(),
        "chunk_mse_by_step": by_step,
        "note": "action error on recorded episodes, not a success rate",
    }


def _encoder_summary(trained: TrainedPolicy) -> dict[str, Any]:
    if trained.encoder is None or trained.is_oracle:
        backbone = trained.encoder.config.backbone if trained.encoder else BLIND
        return {"backbone": backbone, "scales": [], "weights": None, "params": 0,
                "gflops_per_image": 0.0}  # fmt: skip
    enc = trained.encoder.config
    encoder = build_encoder(enc)
    height, width = next(iter(trained.spec.cameras.values()))
    return {
        "backbone": enc.backbone,
        "scales": list(enc.scales),
        "weights": enc.weights,
        "pool": enc.pool,
        "params": int(encoder.backbone_cfg["params"]),
        "gflops_per_image": encoder.gflops_per_image(height, width),
    }


def _plot(result: dict[str, Any], out: Path, n: int, names: list[str] | None) -> list[Path]:
    """Per plotted episode: each action dimension's recorded and executed values over time,
    with the chunk predicted every few steps drawn thin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for e in result["episodes"][:n]:
        dims = e["recorded"].shape[1]
        fig, axes = plt.subplots(dims, 1, figsize=(6, 1.6 * dims + 0.6), dpi=100, sharex=True,
                                 squeeze=False)  # fmt: skip
        t = np.arange(len(e["recorded"]))
        every = max(1, len(t) // 6)
        for d, ax in enumerate(axes[:, 0]):
            ax.plot(t, e["recorded"][:, d], "k-", lw=1.5, label="recorded")
            ax.plot(t, e["executed"][:, d], "C1-", lw=1.2, label="predicted (executed)")
            for s in range(0, len(t), every):
                k = np.arange(e["chunks"].shape[1])
                ok = e["valid"][s]
                ax.plot(s + k[ok], e["chunks"][s, ok, d], "C0-", lw=0.6, alpha=0.6)
            ax.set_ylabel(names[d] if names else f"action {d}", fontsize=8)
            ax.grid(alpha=0.3)
        axes[0, 0].legend(fontsize=7, loc="upper right")
        title = f"episode {e['episode']}: open loop (thin: chunks every {every} steps)"
        axes[0, 0].set_title(title, fontsize=9)
        axes[-1, 0].set_xlabel("step")
        fig.tight_layout()
        path = out / f"open_loop_episode{e['episode']}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def run(cfg: OfflineConfig) -> None:
    logging.getLogger("s2policy").setLevel(logging.INFO)
    r = evaluate_offline(cfg)
    o = r["offline"]
    mse, l1 = o["action_mse"], o["action_l1"]
    print(
        f"offline action error on {o['episodes']} episodes ({o['steps']} steps"
        f"{', held out' if r['held_out'] else ''}): MSE {mse['mean']:.4g} "
        f"[{mse['ci95'][0]:.4g}, {mse['ci95'][1]:.4g}], L1 {l1['mean']:.4g} "
        f"[{l1['ci95'][0]:.4g}, {l1['ci95'][1]:.4g}] (raw units; not a success rate) -> "
        f"{r['results_file']}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    """``s2policy-offline checkpoint=... [dataset=...]`` (``argv``: in-process)."""
    from s2policy.hydra_app import run_hydra, schemas

    run_hydra("offline", "offline_eval", run, argv, schemas(offline_schema=OfflineConfig))


if __name__ == "__main__":
    main()
