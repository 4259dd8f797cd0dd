"""MLP policy: observation embedding -> the whole action chunk, regressed with MSE."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from s2policy.policies.base import Policy, PolicyConfig, register_policy


@dataclass
class MLPPolicyConfig(PolicyConfig):
    name: str = "mlp"
    #: Hidden layer widths.
    hidden_dims: list[int] = field(default_factory=lambda: [512, 512])
    dropout: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        if not self.hidden_dims or min(self.hidden_dims) < 1:
            raise ValueError(f"hidden_dims must be positive widths, got {self.hidden_dims}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@register_policy("mlp", MLPPolicyConfig)
class MLPPolicy(Policy):
    def __init__(self, cfg: MLPPolicyConfig, shape_meta, normalizer):
        super().__init__(cfg, shape_meta, normalizer)
        layers, width = [], self.obs_encoder.out_dim
        for hidden in cfg.hidden_dims:
            layers += [nn.Linear(width, hidden), nn.GELU(), nn.Dropout(cfg.dropout)]
            width = hidden
        layers.append(nn.Linear(width, cfg.horizon * self.action_dim))
        self.net = nn.Sequential(*layers)

    def _forward(self, obs) -> torch.Tensor:
        out = self.net(self.encode_obs(obs))
        return out.view(len(out), self.cfg.horizon, self.action_dim)  # (B, horizon, A) normalized

    def compute_loss(self, batch, generator=None) -> torch.Tensor:
        target = self.normalizer.normalize("action", batch["action"].float())
        return F.mse_loss(self._forward(batch["obs"]), target)

    @torch.no_grad()
    def predict_action(self, obs, generator=None) -> torch.Tensor:
        return self.normalizer.unnormalize("action", self._forward(obs).clamp(-1.5, 1.5))
