"""Diffusion policy: denoise an action chunk with a 1-D temporal U-Net conditioned on the
observation embedding; trained with diffusers' DDPM scheduler, sampled with DDIM."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler

from s2policy.policies.base import Policy, PolicyConfig, register_policy
from s2policy.policies.unet1d import ConditionalUnet1D

PREDICTION_TYPES = ("epsilon", "sample")


@dataclass
class DiffusionPolicyConfig(PolicyConfig):
    name: str = "diffusion"
    #: U-Net channel widths per level; the horizon must be divisible by 2^(levels - 1).
    down_dims: list[int] = field(default_factory=lambda: [64, 128, 256])
    kernel_size: int = 5
    n_groups: int = 8
    step_embed_dim: int = 128
    num_train_timesteps: int = 100
    #: DDIM steps at inference (changeable after training).
    num_inference_steps: int = 16
    beta_schedule: str = "squaredcos_cap_v2"
    #: What the network predicts: the noise (``epsilon``) or the clean chunk (``sample``).
    prediction_type: str = "epsilon"
    #: EMA decay warm-up power (diffusers' EMAModel); evaluation uses the EMA weights.
    ema_power: float = 0.75
    use_ema: bool = True

    def __post_init__(self):
        super().__post_init__()
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}"
            )
        if self.horizon % 2 ** (len(self.down_dims) - 1):
            raise ValueError(
                f"horizon {self.horizon} must be divisible by 2^(len(down_dims) - 1) = "
                f"{2 ** (len(self.down_dims) - 1)}"
            )
        if any(d % self.n_groups for d in self.down_dims):
            raise ValueError(f"down_dims {self.down_dims} must be multiples of n_groups")
        if not 1 <= self.num_inference_steps <= self.num_train_timesteps:
            raise ValueError("num_inference_steps must be in [1, num_train_timesteps]")


@register_policy("diffusion", DiffusionPolicyConfig)
class DiffusionPolicy(Policy):
    def __init__(self, cfg: DiffusionPolicyConfig, shape_meta, normalizer):
        super().__init__(cfg, shape_meta, normalizer)
        self.model = ConditionalUnet1D(
            self.action_dim,
            self.obs_encoder.out_dim,
            tuple(cfg.down_dims),
            cfg.step_embed_dim,
            cfg.kernel_size,
            cfg.n_groups,
        )
        self.train_scheduler = DDPMScheduler(
            num_train_timesteps=cfg.num_train_timesteps,
            beta_schedule=cfg.beta_schedule,
            prediction_type=cfg.prediction_type,
            clip_sample=True,
        )
        self.sample_scheduler = DDIMScheduler.from_config(self.train_scheduler.config)
        self._inference_steps = cfg.num_inference_steps

    stochastic = True

    @property
    def inference_steps(self) -> int:
        return self._inference_steps

    def set_inference_steps(self, steps: int) -> None:
        if not 1 <= steps <= self.cfg.num_train_timesteps:
            raise ValueError(
                f"num_inference_steps must be in [1, {self.cfg.num_train_timesteps}], got {steps}"
            )
        self._inference_steps = int(steps)

    def compute_loss(self, batch, generator: torch.Generator | None = None) -> torch.Tensor:
        cond = self.encode_obs(batch["obs"])
        clean = self.normalizer.normalize("action", batch["action"].float())
        noise = torch.randn(clean.shape, generator=generator, device=clean.device)
        t = torch.randint(
            0, self.cfg.num_train_timesteps, (len(clean),), generator=generator, device=clean.device
        )
        noisy = self.train_scheduler.add_noise(clean, noise, t)
        pred = self.model(noisy, t, cond)
        target = noise if self.cfg.prediction_type == "epsilon" else clean
        return F.mse_loss(pred, target)

    @torch.no_grad()
    def predict_action(
        self,
        obs,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> torch.Tensor:
        cond = self.encode_obs(obs)
        scheduler = self.sample_scheduler
        scheduler.set_timesteps(self._inference_steps)
        shape = (self.cfg.horizon, self.action_dim)
        if isinstance(generator, (list, tuple)):
            x = torch.stack([torch.randn(shape, generator=g, device=g.device) for g in generator])
            x = x.to(cond.device)
        else:
            x = torch.randn((len(cond), *shape), generator=generator, device=cond.device)
        for t in scheduler.timesteps:
            pred = self.model(x, t.expand(len(x)).to(cond.device), cond)
            x = scheduler.step(pred, t, x).prev_sample
        return self.normalizer.unnormalize("action", x.clamp(-1.0, 1.0))
