"""Typed config schemas registered with hydra's ConfigStore (the YAML in ``configs/`` overrides)."""

from __future__ import annotations

from hydra.core.config_store import ConfigStore


def register_configs() -> None:
    """Register every schema; entry points call this before ``hydra.main`` runs."""
    from s2policy.data.collect import CollectConfig
    from s2policy.encoders.s2 import EncoderConfig
    from s2policy.features.command import CacheCommandConfig
    from s2policy.task import TaskConfig

    cs = ConfigStore.instance()
    cs.store(name="collect_schema", node=CollectConfig)
    cs.store(name="cache_schema", node=CacheCommandConfig)
    cs.store(group="task", name="task_schema", node=TaskConfig)
    cs.store(group="encoder", name="encoder_schema", node=EncoderConfig)


def to_object(cfg):
    """Hydra ``DictConfig`` -> the typed dataclass (runs each ``__post_init__`` validation)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_object(cfg)
