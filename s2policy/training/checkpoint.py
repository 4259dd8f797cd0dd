"""Self-contained policy checkpoints that load without executing code.

``<run>/checkpoint/``: ``model.safetensors`` (policy weights, normalizer included),
``ema.safetensors`` (EMA weights, when the policy keeps them), ``policy.json`` (resolved config,
policy config and ``shape_meta``, normalizer statistics, encoder config + spec + cache dtype,
cache fingerprint, task, step) and ``training_state.pt`` (optimizer, scheduler, EMA, RNG states,
step; read with ``torch.load(weights_only=True)``) for ``train.resume=true``. A checkpoint is
written to ``checkpoint.new/`` and swapped in by renames, so a crash never leaves a mixture.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from s2policy.data.normalizer import Normalizer
from s2policy.policies import POLICIES, Policy, make_policy

FORMAT = "s2policy.policy"
VERSION = 1


def _tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def save_checkpoint(
    run_dir: str | Path,
    policy: Policy,
    meta: dict[str, Any],
    ema_state: dict[str, torch.Tensor] | None = None,
    training_state: dict[str, Any] | None = None,
) -> Path:
    """Write ``run_dir/checkpoint`` (see module docstring) and return its path."""
    run_dir = Path(run_dir)
    final, new = run_dir / "checkpoint", run_dir / "checkpoint.new"
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir(parents=True)
    save_file(_tensors(policy.state_dict()), str(new / "model.safetensors"))
    if ema_state is not None:
        save_file(_tensors(ema_state), str(new / "ema.safetensors"))
    if training_state is not None:
        torch.save(training_state, new / "training_state.pt")
    info = {
        "format": FORMAT,
        "version": VERSION,
        "policy": policy.cfg.to_dict(),
        "shape_meta": policy.shape_meta,
        "normalizer": policy.normalizer.state(),
        "has_ema": ema_state is not None,
        **meta,
    }
    (new / "policy.json").write_text(json.dumps(info, indent=1, default=str))
    return swap_in(new, final)


def swap_in(new: Path, final: Path) -> Path:
    """Replace directory ``final`` by the fully written ``new`` with renames: ``final`` moves to
    ``<final>.old`` first, so a crash leaves either the previous or the new directory whole."""
    old = final.with_name(final.name + ".old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    new.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoint_dir(path: str | Path) -> Path:
    """Accept a run directory or its ``checkpoint/``; recover a swap interrupted by a crash."""
    path = Path(path)
    if (path / "checkpoint").is_dir() or (path / "checkpoint.new" / "policy.json").is_file():
        path = path / "checkpoint"
    if (
        not (path / "policy.json").is_file()
        and (path.parent / "checkpoint.new" / "policy.json").is_file()
    ):
        return path.parent / "checkpoint.new"
    if not (path / "policy.json").is_file() or not (path / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"no policy checkpoint at {path} (expected policy.json + model.safetensors, written "
            "by train_policy.py into outputs/<run>/checkpoint)"
        )
    return path


def read_info(path: str | Path) -> dict[str, Any]:
    ckpt = checkpoint_dir(path)
    info = json.loads((ckpt / "policy.json").read_text())
    if info.get("format") != FORMAT:
        raise ValueError(f"{ckpt}/policy.json is not an s2policy checkpoint")
    if info.get("version", 0) > VERSION:
        raise ValueError(f"{ckpt} has checkpoint version {info['version']}; upgrade s2policy")
    return info


@dataclass
class LoadedPolicy:
    policy: Policy
    info: dict[str, Any]
    path: Path


def load_policy(
    path: str | Path, use_ema: bool = True, device: str | torch.device = "cpu"
) -> LoadedPolicy:
    """Rebuild a ready-to-run policy (eval mode) from a checkpoint, without pickle."""
    ckpt = checkpoint_dir(path)
    info = read_info(ckpt)
    name = info["policy"]["name"]
    if name not in POLICIES:
        raise ValueError(
            f"checkpoint {ckpt} holds unknown policy {name!r}; known: {list(POLICIES)}"
        )
    config_cls, _ = POLICIES[name]
    cfg = config_cls(**info["policy"])
    policy = make_policy(cfg, info["shape_meta"], Normalizer.from_state(info["normalizer"]))
    weights = ckpt / ("ema.safetensors" if use_ema and info.get("has_ema") else "model.safetensors")
    missing, unexpected = policy.load_state_dict(load_file(str(weights)), strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{weights} does not match policy {name!r}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    return LoadedPolicy(policy.to(device).eval(), info, ckpt)


def load_training_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Policy weights and training state of a checkpoint (for resuming)."""
    ckpt = checkpoint_dir(path)
    state_file = ckpt / "training_state.pt"
    if not state_file.is_file():
        raise FileNotFoundError(f"{ckpt} has no training_state.pt; it cannot be resumed")
    return load_file(str(ckpt / "model.safetensors")), torch.load(state_file, weights_only=True)
