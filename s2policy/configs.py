"""Typed config schemas registered with hydra's ConfigStore (the YAML in ``configs/`` overrides)."""

from __future__ import annotations

from hydra.core.config_store import ConfigStore


def register_configs() -> None:
    """Register every schema; entry points call this before ``hydra.main`` runs."""
    from s2policy.data.collect import CollectConfig
    from s2policy.encoders.s2 import EncoderConfig
    from s2policy.evaluation.rollout import EvalConfig
    from s2policy.features.command import CacheCommandConfig
    from s2policy.policies.diffusion import DiffusionPolicyConfig
    from s2policy.policies.mlp import MLPPolicyConfig
    from s2policy.pretraining.train import PretrainConfig
    from s2policy.task import TaskConfig
    from s2policy.training.config import RunConfig, TrainConfig

    cs = ConfigStore.instance()
    cs.store(name="collect_schema", node=CollectConfig)
    cs.store(name="cache_schema", node=CacheCommandConfig)
    cs.store(group="task", name="task_schema", node=TaskConfig)
    cs.store(group="encoder", name="encoder_schema", node=EncoderConfig)
    cs.store(name="run_schema", node=RunConfig)
    cs.store(name="eval_schema", node=EvalConfig)
    cs.store(name="pretrain_schema", node=PretrainConfig)
    cs.store(group="policy", name="mlp_schema", node=MLPPolicyConfig)
    cs.store(group="policy", name="diffusion_schema", node=DiffusionPolicyConfig)
    cs.store(group="train", name="train_schema", node=TrainConfig)


def to_object(cfg):
    """Hydra ``DictConfig`` -> the typed dataclass (runs each ``__post_init__`` validation)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_object(cfg)
