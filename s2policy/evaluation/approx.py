"""Feature approximation (S² paper, section 3): can a linear map turn one encoder's frozen
features into another's?

The paper's claim is that a larger model's features are well approximated by a linear map of the
multi-scale (S²) features of a smaller model. Here: a ridge regression from a *source* encoder's
cached features (every camera side by side) to a *target* encoder's, fitted on the frames of
training episodes and scored on held-out episodes by the variance-weighted R² — the fraction of
the target features' total variance that the map explains (1: exact, 0: no better than the
target's mean). The reverse direction (target → source) is reported beside it: if S² features
are a superset of what the large model sees, the forward R² is high and the reverse lower.

    python -m s2policy.evaluation.approx dataset=datasets/cube_pick_200.zarr \
        sources=[micro,micro_s2,mini] target=midi weights=mae4 augment.views=4 \
        out=multirun/ladder/approx

(``configs/approx.yaml``, typed by :class:`ApproxConfig`.) It writes ``approx.json`` (read by the
report: its ``approx_r2`` column) and ``approx.md``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from s2policy.data.store import ReplayBuffer
from s2policy.evaluation.probe import (
    ALPHAS,
    KEEP,
    cache_matrix,
    encoder_config,
    episode_rows,
    ridge_predict,
)
from s2policy.features.augment import AugmentConfig

logger = logging.getLogger(__name__)

#: Frames of the training episodes the map is fitted on (a random subset above this: the
#: normal equations grow with the feature width, not the frame count, so this bounds time only).
MAX_TRAIN_FRAMES = 20_000


def explained_variance(y: np.ndarray, pred: np.ndarray) -> float:
    """Variance-weighted R² over every output dimension: ``1 - sum SSE / sum SST``. Unlike the
    mean of per-dimension R², dimensions that hardly vary (a dead feature) cannot dominate."""
    y, pred = y.reshape(len(y), -1), pred.reshape(len(pred), -1)
    sst = float(((y - y.mean(0)) ** 2).sum())
    if sst <= 0:
        raise ValueError("the target features do not vary over the held-out frames")
    return 1.0 - float(((y - pred) ** 2).sum()) / sst


def linear_r2(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    alphas: Sequence[float] = ALPHAS,
) -> tuple[float, float]:
    """Held-out explained variance of the ridge map ``x -> y``; returns ``(r2, alpha)``. Inputs
    are standardized with training statistics (the penalty then means the same for every
    encoder), the penalty is chosen on the last fifth of the training rows, and the map refitted
    on all of them."""
    if len(x_train) < 5 or len(x_test) < 2:
        raise ValueError(f"too few frames: {len(x_train)} to fit on, {len(x_test)} held out")
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise ValueError("source and target features must hold the same frames")
    pred, best = ridge_predict(x_train, y_train, x_test, explained_variance, alphas)
    return explained_variance(y_test, pred), best


def approximation(
    source: np.ndarray, target: np.ndarray, train: np.ndarray, test: np.ndarray, seed: int = 0
) -> dict[str, float]:
    """``r2`` (source → target) and ``reverse_r2`` (target → source) on the held-out rows."""
    if len(source) != len(target):
        raise ValueError(
            f"source and target caches hold {len(source)} and {len(target)} frames: "
            "they must be caches of the same store"
        )
    if len(train) > MAX_TRAIN_FRAMES:
        train = np.sort(np.random.default_rng(seed).choice(train, MAX_TRAIN_FRAMES, replace=False))
    r2, alpha = linear_r2(source[train], target[train], source[test], target[test])
    rev, rev_alpha = linear_r2(target[train], source[train], target[test], source[test])
    return {"r2": r2, "alpha": alpha, "reverse_r2": rev, "reverse_alpha": rev_alpha}


@dataclass
class ApproxConfig:
    """``configs/approx.yaml``: the store, the source encoders and the target encoder."""

    dataset: str = "datasets/cube_pick_200.zarr"
    #: Names of ``configs/encoder/*.yaml`` whose features approximate the target's.
    sources: list[str] = field(default_factory=lambda: ["micro", "micro_s2"])
    #: Name of the encoder (usually the largest) to approximate.
    target: str = "midi"
    #: The weights of every source and the target: a ``configs/encoder/weights/<name>.yaml``
    #: (``mae4``: each backbone its own ``mae4_<backbone>``), a weights name or file; null: each
    #: encoder config's own.
    weights: str | None = "mae4"
    #: The target's weights when they differ from the sources' (null: ``weights``).
    target_weights: str | None = None
    #: Output folder of ``approx.json`` and ``approx.md``; null: print only.
    out: str | None = None
    val_ratio: float = 0.2
    seed: int = 0
    #: A configs folder holding ``encoder/<name>.yaml``; null: the repository's ``configs/``.
    configs: str | None = None
    #: The augmented views of the caches to reuse (``augment.views=4``: the caches a training
    #: run with ``train.augment.views=4`` built); only their plain features are read.
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self):
        if not self.sources:
            raise ValueError("sources must name at least one encoder config")
        if not 0 < self.val_ratio < 1:
            raise ValueError(f"val_ratio must be in (0, 1), got {self.val_ratio}")


def _encoder_key(enc: Any) -> dict[str, Any]:
    return {
        "backbone": enc.backbone,
        "scales": list(enc.scales),
        "weights": enc.weights,
        "pool": enc.pool,
    }


def run_approx(cfg: ApproxConfig) -> dict[str, Any]:
    from s2policy.encoders.s2 import build_encoder
    from s2policy.features.cache import build_cache

    def features(name: str, weights: str | None) -> tuple[Any, np.ndarray]:
        enc = encoder_config(name, weights if weights else KEEP, cfg.configs)
        cache = build_cache(cfg.dataset, build_encoder(enc), augment=cfg.augment)
        return enc, cache_matrix(cache)

    buffer = ReplayBuffer.open(cfg.dataset)
    if buffer.n_episodes < 2:
        raise ValueError(f"{cfg.dataset} holds 1 episode; need 2 or more to hold one out")
    train, test = episode_rows(buffer, cfg.val_ratio, cfg.seed)
    target_enc, target = features(cfg.target, cfg.target_weights or cfg.weights)
    rows = []
    for name in cfg.sources:
        enc, source = features(name, cfg.weights)
        rows.append(
            {
                "source": name,
                "source_encoder": _encoder_key(enc),
                "dims": [source.shape[1], target.shape[1]],
                **approximation(source, target, train, test, cfg.seed),
            }
        )
    result = {
        "dataset": cfg.dataset,
        "target": cfg.target,
        "target_encoder": _encoder_key(target_enc),
        "frames": {"train": len(train), "held_out": len(test)},
        "rows": rows,
    }
    md = approx_markdown(result)
    print(md)
    if cfg.out:
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "approx.json").write_text(json.dumps(result, indent=2))
        (out / "approx.md").write_text(md)
        print(f"wrote {out / 'approx.json'} and {out / 'approx.md'}")
    return result


def approx_markdown(result: dict[str, Any]) -> str:
    t = result["target"]
    lines = [
        f"Linear approximation of `{t}` features on {result['frames']['held_out']} held-out "
        f"frames of `{result['dataset']}` (fitted on {result['frames']['train']}; explained "
        "variance R²):",
        "",
        f"| source | feature dims (source → {t}) | R² source → {t} | R² {t} → source |",
        "| --- | --- | ---: | ---: |",
    ]
    for r in result["rows"]:
        d = r["dims"]
        lines.append(f"| {r['source']} | {d[0]} → {d[1]} | {r['r2']:.3f} | {r['reverse_r2']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m s2policy.evaluation.approx dataset=... sources=[...] target=...``."""
    from s2policy.hydra_app import run_hydra, schemas

    run_hydra("approx", "approx", run_approx, argv, schemas(approx_schema=ApproxConfig))


if __name__ == "__main__":
    main()
