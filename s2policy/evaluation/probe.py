"""Linear-probe diagnostic: how well frozen (cached) features predict the task state.

A ridge regression from the features of every camera (concatenated; token maps mean-pooled) to
the object position (``data/*_pos``, privileged) and to the gripper gap (``state[:, 4]``), fitted
on training episodes and scored by R² on held-out episodes. Cheap, CPU-friendly, and a fast
predictor of which encoders will work.

    python -m s2policy.evaluation.probe dataset=datasets/cube_pick.zarr encoders=[micro,micro_s2]
    s2policy-probe encoders=[micro,micro_s2] weights=[random,mae_vit_micro]

(``configs/probe.yaml``, typed by :class:`ProbeConfig`.)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from s2policy.data.sampler import split_episodes
from s2policy.data.store import ReplayBuffer
from s2policy.features.cache import CacheInfo

logger = logging.getLogger(__name__)

ALPHAS = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


def r2_score(y: np.ndarray, pred: np.ndarray) -> float:
    """Coefficient of determination averaged over target dimensions."""
    y, pred = y.reshape(len(y), -1), pred.reshape(len(pred), -1)
    ss_res = ((y - pred) ** 2).sum(0)
    ss_tot = ((y - y.mean(0)) ** 2).sum(0)
    return float(np.mean(1 - ss_res / np.maximum(ss_tot, 1e-12)))


def _fit(x: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    xb = np.hstack([x, np.ones((len(x), 1))])
    reg = alpha * np.eye(xb.shape[1])
    reg[-1, -1] = 0.0  # no penalty on the bias
    return np.linalg.solve(xb.T @ xb + reg, xb.T @ y)


def _predict(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.hstack([x, np.ones((len(x), 1))]) @ w


def ridge_predict(x_train, y_train, x_test, score, alphas=ALPHAS) -> tuple[np.ndarray, float]:
    """Predictions for ``x_test`` of a ridge regression fitted on the training rows, its penalty
    chosen by ``score(y, pred)`` on the last fifth of them before the refit on all; returns
    ``(pred, alpha)``. Features are standardized with training statistics."""
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    xtr, xte = (x_train - mu) / sd, (x_test - mu) / sd
    cut = int(len(xtr) * 0.8)
    best = max(
        alphas,
        key=lambda a: score(y_train[cut:], _predict(_fit(xtr[:cut], y_train[:cut], a), xtr[cut:])),
    )
    return _predict(_fit(xtr, y_train, best), xte), best


def ridge_r2(x_train, y_train, x_test, y_test, alphas=ALPHAS) -> tuple[float, float]:
    """Held-out R² of a ridge regression whose penalty is chosen on the last fifth of the
    training rows; returns ``(r2, alpha)``. Features are standardized with training statistics."""
    if len(x_train) < 5 or len(x_test) < 2:
        raise ValueError(f"too few samples for a probe: {len(x_train)} train, {len(x_test)} test")
    pred, best = ridge_predict(x_train, y_train, x_test, r2_score, alphas)
    # R² is undefined where the held-out rows hardly vary (an object that never moves in the few
    # test episodes): 1 - ss_res / ~0 explodes. Score the dimensions that vary there.
    y2, p2 = y_test.reshape(len(y_test), -1), pred.reshape(len(pred), -1)
    varies = y2.std(0) > 1e-3 * (y_train.reshape(len(y_train), -1).std(0) + 1e-12)
    if not varies.any():
        return float("nan"), best
    return r2_score(y2[:, varies], p2[:, varies]), best


def probe_targets(buffer: ReplayBuffer) -> dict[str, np.ndarray]:
    """``object_pos``: every privileged ``*_pos`` array side by side, without the dimensions that
    never change (a goal marker's height, say: a constant would score R² 1 and inflate the mean);
    ``gripper``: the finger gap."""
    targets = {"gripper": np.asarray(buffer["state"][:, 4], np.float64)}
    pos = [k for k in buffer.keys() if k.endswith("_pos")]
    if pos:
        y = np.hstack(
            [np.asarray(buffer[k][:], np.float64).reshape(buffer.n_steps, -1) for k in pos]
        )
        varying = y.std(0) > 1e-6
        if varying.any():
            targets["object_pos"] = y[:, varying]
    return targets


def cache_matrix(cache: CacheInfo) -> np.ndarray:
    """``(T, D)`` float64: every camera's cached features side by side (token maps mean-pooled)."""
    feats = []
    for cam in cache.attrs["cameras"]:
        f = cache.features(cam)[:].astype(np.float64)
        feats.append(f.mean(axis=1) if f.ndim == 3 else f)
    return np.hstack(feats)


def episode_rows(
    buffer: ReplayBuffer, val_ratio: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Step indices of the training and of the held-out episodes (at least one held out; the
    buffer must hold two episodes or more)."""
    val_ratio = max(val_ratio, 1.0 / buffer.n_episodes)  # round(n * ratio) >= 1
    train_eps, test_eps = split_episodes(buffer.n_episodes, val_ratio, seed)
    ends = buffer.episode_ends
    starts = np.r_[0, ends[:-1]]
    train, test = (
        np.concatenate([np.arange(starts[e], ends[e]) for e in eps])
        for eps in (train_eps, test_eps)
    )
    return train, test


def probe_cache(
    store: str | Path, cache: CacheInfo, val_ratio: float = 0.2, seed: int = 0
) -> dict[str, float]:
    """R² per target of the cache's features on held-out episodes of ``store`` (at least one
    held-out episode; nothing to report for a store of a single episode)."""
    buffer = ReplayBuffer.open(store)
    if buffer.n_episodes < 2:
        logger.warning("%s holds 1 episode: no held-out episode to probe on", store)
        return {}
    x = cache_matrix(cache)
    train, test = episode_rows(buffer, val_ratio, seed)
    out = {}
    for name, y in probe_targets(buffer).items():
        out[name], _ = ridge_r2(x[train], y[train], x[test], y[test])
    return out


@dataclass
class ProbeConfig:
    """``configs/probe.yaml``: which dataset, which encoders and weights."""

    dataset: str = "datasets/cube_pick.zarr"
    #: Names of ``configs/encoder/*.yaml``.
    encoders: list[str] = field(default_factory=lambda: ["micro", "micro_s2"])
    #: Encoder weights to compare, each with every encoder: null/random (random init), a file,
    #: a pretrained name; ``[]``: each encoder's own weights (those of its config).
    weights: list[str | None] = field(default_factory=list)
    #: A configs folder holding ``encoder/<name>.yaml``; null: the repository's ``configs/``.
    configs: str | None = None

    def __post_init__(self):
        if not self.encoders:
            raise ValueError("encoders must list at least one encoder config")


#: ``encoder_config(..., weights=KEEP)``: the weights the encoder config names.
KEEP = "<keep>"


def encoder_config(name: str, weights: str | None = KEEP, configs: str | Path | None = None):
    """``configs/encoder/<name>.yaml`` as a typed :class:`EncoderConfig`, composed by hydra just
    as ``encoder=<name>`` is in the other commands; ``weights`` replaces its weights (None,
    ``"null"`` or ``"random"``: random init; :data:`KEEP`: the config's own; the name of a
    ``configs/encoder/weights/<name>.yaml``, as ``encoder/weights=<name>``: ``mae4``; else a
    weights name or file)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup
    from omegaconf import OmegaConf

    from s2policy.encoders.s2 import EncoderConfig
    from s2policy.hydra_app import CONFIG_DIR, schemas

    schemas(encoder_choice_schema={"encoder": EncoderConfig})()
    folder = Path(configs or CONFIG_DIR).resolve()
    overrides = [f"+encoder={name}"]
    if isinstance(weights, str) and (folder / "encoder" / "weights" / f"{weights}.yaml").is_file():
        overrides.append(f"+encoder/weights={weights}")  # a weights group: mae4, mae4c, ...
        weights = KEEP
    backup = get_gh_backup()  # also works inside a running hydra app (restored below)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(folder), version_base="1.3"):
            cfg = compose("encoder_choice_schema", overrides=overrides)
    finally:
        restore_gh_from_backup(backup)
    if weights != KEEP:
        cfg.encoder.weights = None if weights in (None, "null", "random") else weights
    return OmegaConf.to_object(cfg.encoder)


def run_probe(cfg: ProbeConfig) -> None:
    from s2policy.encoders.s2 import build_encoder
    from s2policy.features.cache import build_cache

    print("| encoder | weights | object position R² | gripper R² |")
    print("| --- | --- | ---: | ---: |")
    for name in cfg.encoders:
        for weights in cfg.weights or [KEEP]:
            enc = encoder_config(name, weights, cfg.configs)
            cache = build_cache(cfg.dataset, build_encoder(enc))
            r2 = probe_cache(cfg.dataset, cache)
            print(
                f"| {name} | {enc.weights or 'random'} | {r2.get('object_pos', float('nan')):.3f} "
                f"| {r2.get('gripper', float('nan')):.3f} |"
            )


def main(argv: Sequence[str] | None = None) -> None:
    """``s2policy-probe dataset=... encoders=[...] weights=[...]`` (``argv``: in-process)."""
    from s2policy.hydra_app import run_hydra, schemas

    run_hydra("probe", "probe", run_probe, argv, schemas(probe_schema=ProbeConfig))


if __name__ == "__main__":
    main()
