"""A trained policy as one typed artifact: written by training, loaded (validated once) by
evaluation, the robot loop, sweeps, the report and the probe. Nothing else reads its files.

``<run>/checkpoint/``: ``model.safetensors`` (policy weights, normalizer included),
``ema.safetensors`` (EMA weights, when the policy keeps them), ``policy.json`` (resolved run
config, policy config and ``shape_meta``, normalizer statistics, encoder config + spec + cache
dtype, cache fingerprint, dataset, task, step) and ``training_state.pt`` (optimizer, scheduler,
EMA, RNG states, step; read with ``torch.load(weights_only=True)``) for ``train.resume=true``.
A checkpoint is written to ``checkpoint.new/`` and swapped in by renames, so a crash never
leaves a mixture. ``<run>/best/`` (same files, no training state; ``policy.json`` adds
``selection``) holds the weights a run selected with ``train.select=val_loss|rollout``.
Loading runs no code from the files (safetensors + JSON).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from s2policy.data.normalizer import Normalizer
from s2policy.data.privileged import PRIVILEGED
from s2policy.data.spec import DataSpec
from s2policy.encoders.s2 import BLIND, EncoderConfig
from s2policy.fileio import read_json, save_state, save_tensors, write_folder
from s2policy.policies.base import POLICIES, Policy, make_policy
from s2policy.task import TaskConfig

FORMAT = "s2policy.policy"
VERSION = 1
#: Largest ``policy.json`` read (its normalizer statistics grow with the feature size: a few MB
#: for token maps); a larger file is refused before it is read.
MAX_POLICY_JSON_BYTES = 64 << 20
#: The folder of the weights a run selected (``train.select``), beside ``checkpoint/``.
BEST = "best"
#: Policy fields added after checkpoints were first written, at the values those used (token
#: maps were pooled by attention before the spatial head was a choice).
LEGACY_POLICY = {"spatial_head": "attention", "keypoints": 32}


@dataclass(frozen=True)
class EncoderInfo:
    """The frozen encoder a policy was trained on: its config, the spec it produced (weights
    digest included) and the dtype its features were computed in."""

    config: EncoderConfig
    spec: dict[str, Any]
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "spec": self.spec, "dtype": self.dtype}


@dataclass(frozen=True)
class Provenance:
    """Where a policy comes from: the data it was trained on and how."""

    #: The demonstration store.
    dataset: str | None
    #: Episodes in the store when training started.
    dataset_episodes: int | None
    #: Fingerprint of the feature cache it was trained on (``None`` when blind).
    cache_fingerprint: str | None
    #: The resolved run config (``RunConfig.to_dict()``).
    config: dict[str, Any]

    @property
    def train_seed(self) -> int:
        return int(self.config.get("train", {}).get("seed", 0))

    @property
    def demos(self) -> int | None:
        """The demonstrations the policy trained on (``train.n_demos``, else the store's)."""
        return self.config.get("train", {}).get("n_demos") or self.dataset_episodes


@dataclass
class TrainedPolicy:
    """A ready-to-run policy (eval mode) with everything needed to run it as it was trained."""

    policy: Policy
    #: The simulated task as the demonstrations showed it (image size, cameras, randomization,
    #: ...); None for a dataset-defined run (a robot's data: :attr:`spec` is all it has).
    task: TaskConfig | None
    #: The frozen encoder; ``None`` for a blind (state-only) policy.
    encoder: EncoderInfo | None
    provenance: Provenance
    #: Training step of these weights.
    step: int
    #: Whether the checkpoint holds EMA weights (and whether they were loaded).
    has_ema: bool
    used_ema: bool
    #: The checkpoint directory it was loaded from.
    path: Path
    #: What its data looked like (cameras it sees with image sizes, state and action sizes and
    #: names, rate, tasks); derived from ``task`` and ``shape_meta`` for older checkpoints.
    spec: DataSpec | None = None

    def __post_init__(self):
        if self.spec is None:
            self.spec = legacy_spec(self.task, self.policy.shape_meta)

    @property
    def shape_meta(self) -> dict[str, Any]:
        return self.policy.shape_meta

    @property
    def normalizer(self) -> Normalizer:
        return self.policy.normalizer

    @property
    def cameras(self) -> list[str]:
        """Cameras whose features the policy sees ([] when blind or the oracle)."""
        return [k for k in self.policy.shape_meta["features"] if k != PRIVILEGED]

    @property
    def is_blind(self) -> bool:
        return self.encoder is None

    @property
    def is_oracle(self) -> bool:
        return self.encoder is not None and self.encoder.config.is_oracle

    @property
    def oracle_keys(self) -> list[str]:
        """The privileged keys of an oracle policy's feature vector ([] otherwise)."""
        return list(self.encoder.spec["keys"]) if self.is_oracle else []

    @property
    def run_dir(self) -> Path:
        return self.path.parent

    @classmethod
    def load(
        cls, path: str | Path, use_ema: bool = True, device: str | torch.device = "cpu"
    ) -> TrainedPolicy:
        return load(path, use_ema, device)


def legacy_spec(task: TaskConfig | None, shape_meta: dict[str, Any]) -> DataSpec:
    """The spec a checkpoint written before specs were recorded implies: its simulated task's
    cameras (image size) and the policy's state and action sizes."""
    from envs import STATE_KEYS

    size = list(task.env.image_size) if task is not None else [0, 0]
    cameras = {c: size for c in shape_meta["features"] if c != PRIVILEGED}
    state_dim = int(shape_meta["state"][-1])
    return DataSpec(
        cameras=cameras,
        state_dim=state_dim,
        action_dim=int(shape_meta["action"][-1]),
        state_names=list(STATE_KEYS) if task is not None else None,
        control_hz=task.env.control_hz if task is not None else None,
        sim_task=task.name if task is not None else None,
    )


def _tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def save(
    run_dir: str | Path,
    policy: Policy,
    task: TaskConfig,
    encoder: EncoderInfo | None,
    provenance: Provenance,
    step: int,
    ema_state: dict[str, torch.Tensor] | None = None,
    training_state: dict[str, Any] | None = None,
    name: str = "checkpoint",
    selection: dict[str, Any] | None = None,
    spec: DataSpec | None = None,
) -> Path:
    """Write ``run_dir/<name>`` (see module docstring; ``name`` is ``best`` for the weights a
    run selected, which ``selection`` describes) and return its path."""
    run_dir = Path(run_dir)
    final, new = run_dir / name, run_dir / f"{name}.new"
    info = {
        "format": FORMAT,
        "version": VERSION,
        "policy": policy.cfg.to_dict(),
        "shape_meta": policy.shape_meta,
        "normalizer": policy.normalizer.state(),
        "has_ema": ema_state is not None,
        "config": provenance.config,
        "dataset": provenance.dataset,
        "dataset_episodes": provenance.dataset_episodes,
        "cache_fingerprint": provenance.cache_fingerprint,
        "task": task.to_dict() if task is not None else None,
        "data_spec": (spec or legacy_spec(task, policy.shape_meta)).to_dict(),
        "encoder": encoder.to_dict() if encoder is not None else None,
        "step": step,
    }
    if selection is not None:
        info["selection"] = selection

    def write(folder: Path) -> None:
        save_tensors(_tensors(policy.state_dict()), folder / "model.safetensors")
        if ema_state is not None:
            save_tensors(_tensors(ema_state), folder / "ema.safetensors")
        if training_state is not None:
            save_state(training_state, folder / "training_state.pt")
        (folder / "policy.json").write_text(json.dumps(info, indent=1, default=str))

    rerun = (
        f"resume with train.resume=true (the run's previous {name}/ is kept)"
        if training_state is not None
        else "rerun (the previous checkpoint is kept)"
    )
    return write_folder(new, final, write, rerun)


def _complete(ckpt: Path) -> bool:
    """``policy.json`` is written last: a directory that has it (and the weights) is whole."""
    return (ckpt / "policy.json").is_file() and (ckpt / "model.safetensors").is_file()


def whole_checkpoint(run_dir: Path, name: str = "checkpoint") -> Path | None:
    """The checkpoint ``name`` of a run directory that is whole: ``<name>/``, else (a crash
    interrupted a swap) ``<name>.new/``, else ``<name>.old/``; ``None`` when none is."""
    for folder in (name, f"{name}.new", f"{name}.old"):
        if _complete(run_dir / folder):
            return run_dir / folder
    return None


def checkpoint_dir(path: str | Path) -> Path:
    """Accept a run directory or its ``checkpoint/``. When a crash interrupted the swap of a new
    checkpoint (``checkpoint/`` missing), the whole ``checkpoint.new/`` is the newest, else the
    whole ``checkpoint.old/`` (read in place: loading never renames anything)."""
    path = Path(path)
    if path.name != "checkpoint" and any(
        (path / name).is_dir() for name in ("checkpoint", "checkpoint.new", "checkpoint.old")
    ):
        path = path / "checkpoint"
    if path.name in ("checkpoint", BEST):
        path = whole_checkpoint(path.parent, path.name) or path
    if not _complete(path):
        raise FileNotFoundError(
            f"no policy checkpoint at {path} (expected policy.json + model.safetensors, written "
            "by train_policy.py into outputs/<run>/checkpoint)"
        )
    return path


def read_info(path: str | Path) -> dict[str, Any]:
    """The raw ``policy.json`` of a checkpoint (format and version checked)."""
    ckpt = checkpoint_dir(path)
    info = read_json(
        ckpt / "policy.json",
        "checkpoint's policy.json",
        "restore the checkpoint from a copy or retrain",
        limit=MAX_POLICY_JSON_BYTES,
    )
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ValueError(f"{ckpt}/policy.json is not an s2policy checkpoint")
    if info.get("version", 0) > VERSION:
        raise ValueError(f"{ckpt} has checkpoint version {info['version']}; upgrade s2policy")
    return info


def load(
    path: str | Path, use_ema: bool = True, device: str | torch.device = "cpu"
) -> TrainedPolicy:
    """Rebuild a trained policy from a checkpoint (a run directory or its ``checkpoint/``),
    validated once, without pickle."""
    ckpt = checkpoint_dir(path)
    info = read_info(ckpt)
    name = info["policy"]["name"]
    if name not in POLICIES:
        raise ValueError(
            f"checkpoint {ckpt} holds unknown policy {name!r}; known: {list(POLICIES)}"
        )
    config_cls, _ = POLICIES[name]
    cfg = config_cls(**{**LEGACY_POLICY, **info["policy"]})
    policy = make_policy(cfg, info["shape_meta"], Normalizer.from_state(info["normalizer"]))
    has_ema = bool(info.get("has_ema"))
    weights = ckpt / ("ema.safetensors" if use_ema and has_ema else "model.safetensors")
    try:
        missing, unexpected = policy.load_state_dict(read_weights(weights), strict=False)
    except RuntimeError as err:  # tensor shapes that do not fit the policy config
        raise ValueError(
            f"{weights} does not fit the policy described by {ckpt}/policy.json (tensor shapes "
            "differ: was policy.json edited?); restore the checkpoint or retrain"
        ) from err
    if missing or unexpected:
        raise ValueError(
            f"{weights} does not match policy {name!r}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    enc = info.get("encoder")
    encoder = None
    if enc and enc.get("config") and enc["config"].get("backbone") != BLIND:
        encoder = EncoderInfo(EncoderConfig(**enc["config"]), enc["spec"], enc["dtype"])
    if (encoder is None) != (not policy.shape_meta["features"]):
        raise ValueError(
            f"{ckpt}/policy.json is inconsistent: the policy sees cameras "
            f"{list(policy.shape_meta['features'])} but the encoder is {enc!r}"
        )
    return TrainedPolicy(
        policy=policy.to(device).eval(),
        task=TaskConfig(**info["task"]) if info.get("task") else None,
        encoder=encoder,
        provenance=Provenance(
            info.get("dataset"),
            info.get("dataset_episodes"),
            info.get("cache_fingerprint"),
            info.get("config", {}),
        ),
        step=int(info.get("step", 0)),
        has_ema=has_ema,
        used_ema=use_ema and has_ema,
        path=ckpt,
        spec=_spec(info, ckpt),
    )


def _spec(info: dict[str, Any], ckpt: Path) -> DataSpec | None:
    """The checkpoint's data spec (None: written before specs, derived from its task)."""
    if not info.get("data_spec"):
        return None
    try:
        return DataSpec.from_dict(info["data_spec"])
    except (TypeError, ValueError, KeyError) as err:
        raise ValueError(
            f"{ckpt}/policy.json has a data_spec that is not one ({type(err).__name__}: {err}): "
            "was policy.json edited? restore the checkpoint or retrain"
        ) from err


def recover(run_dir: str | Path) -> Path | None:
    """Finish a checkpoint swap that a crash interrupted (the same choice as
    :func:`checkpoint_dir`: the whole ``checkpoint.new``, else the whole ``checkpoint.old``,
    renamed to ``checkpoint``) before a run resumes; returns the checkpoint, or ``None`` when the
    run has none. Nothing is deleted."""
    run_dir = Path(run_dir)
    final, whole = run_dir / "checkpoint", whole_checkpoint(run_dir)
    if whole is None or whole == final:
        return whole
    if final.exists():  # an incomplete directory in the way: keep it aside
        final.rename(run_dir / f"checkpoint.incomplete-{time.strftime('%Y%m%d-%H%M%S')}")
    whole.rename(final)
    return final


def read_weights(file: Path) -> dict[str, torch.Tensor]:
    """A safetensors file, or one sentence saying it is damaged."""
    try:
        return load_file(str(file))
    except Exception as err:  # noqa: BLE001  (safetensors raises several types)
        raise ValueError(
            f"{file} is not a readable safetensors file ({type(err).__name__}: {err}); the "
            "checkpoint is damaged: restore it from a copy or retrain"
        ) from err


def read_training_state(file: Path) -> dict[str, Any]:
    """``training_state.pt`` as plain tensors and containers (no code runs), or one sentence."""
    try:
        return torch.load(file, weights_only=True)
    except Exception as err:  # noqa: BLE001  (pickle and zip errors of several types)
        raise ValueError(
            f"{file} is not a plain tensor file that s2policy wrote (it is damaged, or it would "
            "need code to run to load); it is not loaded: remove the run's checkpoint to train "
            "from scratch, or restore the file"
        ) from err


def training_state(path: str | Path) -> dict[str, Any]:
    """The training state of a checkpoint (optimizer, scheduler, EMA, RNG states, step)."""
    ckpt = checkpoint_dir(path)
    state_file = ckpt / "training_state.pt"
    if not state_file.is_file():
        raise FileNotFoundError(f"{ckpt} has no training_state.pt; it cannot be resumed")
    return read_training_state(state_file)
