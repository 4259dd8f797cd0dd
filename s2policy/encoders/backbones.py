"""Named ViT backbones built through timm, and their weights (random, local file, cache, project).

Weights are never downloaded at run time. ``weights`` may be:

- ``None``: random initialization, deterministic for a given ``init_seed``;
- a path to a ``.safetensors`` file, or a ``.pth``/``.pt``/``.bin`` file read with
  ``torch.load(weights_only=True)`` (no code runs);
- ``"hub"``: timm's pretrained weights, taken from the local HuggingFace cache only;
- the name of a project-pretrained checkpoint: ``<weights_dir>/<name>.safetensors`` (+ ``.json``),
  where ``weights_dir`` is ``$S2POLICY_WEIGHTS_DIR`` or ``./weights``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from s2policy.fileio import read_json

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackboneSpec:
    """A registry entry: a timm architecture plus overrides of its constructor arguments."""

    timm_name: str
    #: Default tile (base) size in pixels; a multiple of the patch size.
    img_size: int
    overrides: dict[str, Any] = field(default_factory=dict)
    description: str = ""


#: Named backbones. ``vit_micro``/``vit_nano`` are CPU-sized for tests and demos.
BACKBONES: dict[str, BackboneSpec] = {
    "vit_nano": BackboneSpec(
        "vit_tiny_patch16_224",
        32,
        {"patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 2},
        "test-sized ViT: patch 8, width 48, depth 2",
    ),
    "vit_micro": BackboneSpec(
        "vit_tiny_patch16_224",
        64,
        {"patch_size": 8, "embed_dim": 96, "depth": 4, "num_heads": 3},
        "CPU demo ViT: patch 8, width 96, depth 4",
    ),
    # The CPU backbone ladder (README: "Does S² replace a larger model?"): single-scale FLOPs at
    # 64 px of vit_mini ~ vit_micro S² (64, 128); vit_midi ~ 4x vit_mini ~ vit_mini S² (64, 128).
    "vit_mini": BackboneSpec(
        "vit_tiny_patch16_224",
        64,
        {"patch_size": 8, "embed_dim": 192, "depth": 5, "num_heads": 3},
        "CPU ladder ViT: patch 8, width 192, depth 5 (the FLOPs of vit_micro S² (64, 128))",
    ),
    "vit_midi": BackboneSpec(
        "vit_tiny_patch16_224",
        64,
        {"patch_size": 8, "embed_dim": 256, "depth": 12, "num_heads": 4},
        "CPU ladder ViT: patch 8, width 256, depth 12 (about 4x the FLOPs of vit_mini)",
    ),
    "vit_nano_reg": BackboneSpec(
        "vit_small_patch14_reg4_dinov2",
        28,
        {"patch_size": 7, "embed_dim": 48, "depth": 2, "num_heads": 2},
        "test-sized ViT with 4 register tokens (DINOv2-style), patch 7",
    ),
    "vit_t": BackboneSpec("vit_tiny_patch16_224", 224, {}, "ViT-Ti/16, 5.7 M params"),
    "vit_s": BackboneSpec("vit_small_patch16_224", 224, {}, "ViT-S/16, 22 M params"),
    "vit_b": BackboneSpec("vit_base_patch16_224", 224, {}, "ViT-B/16, 86 M params"),
    "vit_l": BackboneSpec("vit_large_patch16_224", 224, {}, "ViT-L/16, 304 M params"),
    "vit_h": BackboneSpec("vit_huge_patch14_224", 224, {}, "ViT-H/14, 632 M params"),
    "vit_s_reg": BackboneSpec(
        "vit_small_patch14_reg4_dinov2", 224, {}, "ViT-S/14 with 4 registers (DINOv2)"
    ),
    "vit_b_reg": BackboneSpec(
        "vit_base_patch14_reg4_dinov2", 224, {}, "ViT-B/14 with 4 registers (DINOv2)"
    ),
}

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def weights_dir() -> Path:
    return Path(os.environ.get("S2POLICY_WEIGHTS_DIR", "weights"))


def get_spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
    return BACKBONES[name]


def build_backbone(
    name: str, weights: str | Path | None = None, img_size: int | None = None, init_seed: int = 0
) -> tuple[nn.Module, dict[str, Any]]:
    """Build backbone ``name`` (see :data:`BACKBONES`) for square tiles of ``img_size`` pixels.

    Returns the model (eval mode, frozen) and a JSON-able config: timm name, constructor
    arguments, tile size, patch size, width, prefix-token count, preprocessing mean/std/
    interpolation, weights source and a digest of the weights (it feeds cache fingerprints).
    """
    spec = get_spec(name)
    img_size = int(img_size or spec.img_size)
    kwargs = {**spec.overrides, "img_size": img_size, "num_classes": 0}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        model = timm.create_model(spec.timm_name, pretrained=False, **kwargs)
    patch = model.patch_embed.patch_size[0]
    if img_size % patch:
        raise ValueError(
            f"tile size {img_size} of backbone {name!r} must be a multiple of its patch size "
            f"{patch}"
        )
    source = "random" if weights is None else load_weights(model, weights, name)
    model.eval().requires_grad_(False)
    pcfg = model.pretrained_cfg
    cfg = {
        "name": name,
        "timm_name": spec.timm_name,
        "kwargs": kwargs,
        "img_size": img_size,
        "patch_size": patch,
        "grid_size": list(model.patch_embed.grid_size),
        "embed_dim": model.embed_dim,
        "num_prefix_tokens": model.num_prefix_tokens,
        "mean": list(pcfg.get("mean", (0.485, 0.456, 0.406))),
        "std": list(pcfg.get("std", (0.229, 0.224, 0.225))),
        "interpolation": pcfg.get("interpolation", "bicubic"),
        "weights": source,
        "init_seed": init_seed if weights is None else None,
        "weights_digest": weights_digest(model),
        "params": sum(p.numel() for p in model.parameters()),
    }
    return model, cfg


def resolve_weights(weights: str | Path, name: str) -> Path:
    """The local file that ``weights`` names (see module docstring); clear errors otherwise."""
    text = str(weights)
    if text == "hub":
        return _hub_cache_file(name)
    path = Path(text).expanduser()
    if path.suffix in WEIGHT_SUFFIXES or os.sep in text:
        if not path.is_file():
            raise FileNotFoundError(
                f"weights file {path} does not exist; pass encoder.weights=<path to a "
                f".safetensors or .pth file>, a pretrained name from {weights_dir()}/, "
                "or null for random initialization"
            )
        return path
    project = weights_dir() / f"{text}.safetensors"
    if project.is_file():
        return project
    known = sorted(p.stem for p in weights_dir().glob("*.safetensors"))
    raise FileNotFoundError(
        f"no project-pretrained weights named {text!r} in {weights_dir()}/ "
        f"(available: {', '.join(known) or 'none'}); pretrain them (MAE) or pass a file path"
    )


def load_weights(model: nn.Module, weights: str | Path, name: str) -> str:
    """Load ``weights`` into ``model`` without executing code; returns a label of the source."""
    path = resolve_weights(weights, name)
    state = read_state_dict(path)
    meta_file = path.with_suffix(".json")
    if meta_file.is_file():
        meta = read_json(meta_file, "weights record", "restore it or remove it")
        if meta.get("backbone") not in (None, name):
            raise ValueError(
                f"weights {path} were trained for backbone {meta['backbone']!r}, not {name!r}; "
                f"use encoder.backbone={meta['backbone']}"
            )
    from timm.models.vision_transformer import checkpoint_filter_fn

    try:
        state = checkpoint_filter_fn(state, model)  # other layouts, position-embedding resize
        missing, unexpected = model.load_state_dict(state, strict=False)
    except (RuntimeError, KeyError, ValueError) as err:
        mismatches = [ln.strip() for ln in str(err).splitlines() if "size mismatch" in ln]
        raise ValueError(
            f"weights {path} do not fit backbone {name!r} "
            f"({'; '.join(mismatches[:3]) or err}); is it a checkpoint of another architecture?"
        ) from err
    missing = [k for k in missing if not k.startswith("head")]
    unexpected = [k for k in unexpected if not k.startswith("head")]
    if missing or unexpected:
        raise ValueError(
            f"weights {path} do not fit backbone {name!r}: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{'...' if len(unexpected) > 5 else ''}; is it a checkpoint of another architecture?"
        )
    return str(weights)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            lines = [ln.strip() for ln in str(err).splitlines() if "error" in ln.lower()]
            reason = lines[-1] if lines else type(err).__name__
            raise ValueError(
                f"cannot read {path} as a weights-only torch checkpoint ({reason}); s2policy "
                "never unpickles code: convert it to .safetensors"
            ) from err
    for key in ("model", "state_dict", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def weights_digest(model: nn.Module) -> str:
    """SHA-256 over the parameter and buffer names, shapes, dtypes and values."""
    h = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{key}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _hub_cache_file(name: str) -> Path:
    spec = get_spec(name)
    cfg = timm.models.get_pretrained_cfg(spec.timm_name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if spec.overrides:
        raise ValueError(
            f"backbone {name!r} changes timm's {spec.timm_name} architecture, so no hub weights "
            "exist for it; use weights=null or a project-pretrained checkpoint"
        )
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(hub_id, filename)
            if isinstance(found, str):
                return Path(found)
    raise FileNotFoundError(
        f"pretrained weights of {name!r} (timm {spec.timm_name!r}, hub {hub_id!r}) are not in "
        "the local HuggingFace cache, and s2policy never downloads at run time; on a machine "
        f"with network run python -c \"import timm; timm.create_model('{spec.timm_name}', "
        'pretrained=True)" and copy ~/.cache/huggingface here, or save the weights as a '
        ".safetensors file and pass encoder.weights=<path>"
    )
