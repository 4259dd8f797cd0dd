"""The Policy interface, its shared config, and the registry of policies by name."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from s2policy.data.normalizer import Normalizer
from s2policy.policies.obs_encoder import SPATIAL_HEADS, ObsEncoder

#: name -> (config class, policy class); filled by :func:`register_policy`.
POLICIES: dict[str, tuple[type, type]] = {}


@dataclass
class PolicyConfig:
    """Fields shared by every policy (``configs/policy/*.yaml``)."""

    #: Registry name of the policy (``mlp``, ``diffusion``).
    name: str = "mlp"
    #: Observation steps the policy sees (the current one and ``n_obs_steps - 1`` before it).
    n_obs_steps: int = 2
    #: Steps of the predicted action chunk (starting at the first observation step).
    horizon: int = 16
    #: Actions executed per chunk, from the current step on.
    n_action_steps: int = 8
    #: Cameras whose cached features the policy sees (null: the task's). A blind (state-only)
    #: policy is ``encoder=blind``.
    cameras: list[str] | None = None
    #: Width each camera's features are projected to.
    d_feature: int = 128
    #: Heads of the attention pooling of token-map features.
    pool_heads: int = 4
    #: How token-map features (``encoder.pool=tokens``) are reduced: ``softmax`` (SpatialSoftmax
    #: keypoints on the grid + the prefix tokens, as robomimic's visual core; measured best,
    #: README) or ``attention`` (a learnable query over all tokens; what checkpoints written
    #: before this field used). Pooled features ignore it.
    spatial_head: str = "softmax"
    #: Keypoints of ``spatial_head=softmax``.
    keypoints: int = 32
    #: Standardize features with training-split statistics (else identity).
    normalize_features: bool = True

    def __post_init__(self):
        if self.name not in POLICIES:
            raise ValueError(f"unknown policy {self.name!r}; known: {', '.join(POLICIES)}")
        if min(self.n_obs_steps, self.horizon, self.n_action_steps) < 1:
            raise ValueError("n_obs_steps, horizon and n_action_steps must be >= 1")
        if self.n_obs_steps - 1 + self.n_action_steps > self.horizon:
            raise ValueError(
                f"horizon {self.horizon} must cover n_obs_steps - 1 + n_action_steps = "
                f"{self.n_obs_steps - 1 + self.n_action_steps} (the executed actions)"
            )
        if self.d_feature < 1 or self.pool_heads < 1 or self.d_feature % self.pool_heads:
            raise ValueError("d_feature must be a positive multiple of pool_heads")
        if self.spatial_head not in SPATIAL_HEADS:
            raise ValueError(
                f"unknown spatial_head {self.spatial_head!r}; known: {', '.join(SPATIAL_HEADS)}"
            )
        if self.keypoints < 1:
            raise ValueError(f"keypoints must be >= 1, got {self.keypoints}")

    @property
    def action_start(self) -> int:
        """Index in the chunk of the action for the current step."""
        return self.n_obs_steps - 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def register_policy(name: str, config_cls: type):
    def wrap(cls):
        POLICIES[name] = (config_cls, cls)
        cls.name = name
        return cls

    return wrap


class Policy(nn.Module):
    """Predicts action chunks from cached features + state; trained on normalized data.

    ``shape_meta``: ``{"features": {cam: shape}, "state": (S,), "action": (A,)}``, and for
    token-map features ``"token_layouts": {cam: (prefix tokens, rows, cols)}``.
    """

    name: ClassVar[str]

    def __init__(self, cfg: PolicyConfig, shape_meta: dict[str, Any], normalizer: Normalizer):
        super().__init__()
        self.cfg = cfg
        self.shape_meta = shape_meta
        self.normalizer = normalizer
        self.action_dim = int(shape_meta["action"][0])
        self.obs_encoder = ObsEncoder(
            {k: tuple(v) for k, v in shape_meta["features"].items()},
            int(shape_meta["state"][0]),
            cfg.n_obs_steps,
            cfg.d_feature,
            cfg.pool_heads,
            cfg.spatial_head,
            cfg.keypoints,
            {k: tuple(v) for k, v in shape_meta.get("token_layouts", {}).items()},
        )

    def encode_obs(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Raw observations ``(B, T_obs, ...)`` -> normalized -> embedding ``(B, D_obs)``."""
        norm = {
            k: self.normalizer.normalize(k, v.float()) if k in self.normalizer else v
            for k, v in obs.items()
        }
        return self.obs_encoder(norm)

    def compute_loss(
        self, batch: dict[str, Any], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``batch = {"obs": {...}, "action": (B, horizon, A)}`` (raw units) -> scalar loss;
        ``generator`` drives any sampling (diffusion noise and steps)."""
        raise NotImplementedError

    def forward(
        self, batch: dict[str, Any], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The training loss (so that DistributedDataParallel wraps ``compute_loss``)."""
        return self.compute_loss(batch, generator)

    #: Whether :meth:`predict_action` samples (then ``generator`` makes it reproducible).
    stochastic: ClassVar[bool] = False

    def predict_action(
        self,
        obs: dict[str, torch.Tensor],
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """Raw observations -> action chunk ``(B, horizon, A)`` in raw units. ``generator``
        drives any sampling: one for the batch, or one per row (a row's result then does not
        depend on which other rows share the batch); deterministic policies ignore it."""
        raise NotImplementedError

    @property
    def inference_steps(self) -> int | None:
        """Denoising steps per prediction (``None``: the policy predicts in one pass)."""
        return None

    def set_inference_steps(self, steps: int) -> None:
        """Change the number of denoising steps at inference (only iterative policies)."""
        raise ValueError(
            f"policy {self.name!r} predicts in one pass and has no inference steps to set; "
            "drop num_inference_steps"
        )


def make_policy(cfg: PolicyConfig, shape_meta: dict[str, Any], normalizer: Normalizer) -> Policy:
    config_cls, policy_cls = POLICIES[cfg.name]
    if not isinstance(cfg, config_cls):
        raise TypeError(
            f"policy {cfg.name!r} needs a {config_cls.__name__}, got {type(cfg).__name__}"
        )
    return policy_cls(cfg, shape_meta, normalizer)
