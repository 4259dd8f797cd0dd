"""Every typed config schema, registered with hydra's ConfigStore (the YAML in ``configs/``
overrides): what the commands of :mod:`s2policy.cli` compose. The packages' own commands register
only their schema (:func:`s2policy.hydra_app.schemas`), so no package depends on this registry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from hydra.core.config_store import ConfigStore

from s2policy.hydra_app import CONFIG_DIR, register_resolvers, to_object
from s2policy.hydra_app import run_hydra as _run_hydra

__all__ = ["CONFIG_DIR", "register_configs", "run_hydra", "to_object"]


def register_configs() -> None:
    """Register every schema (and the resolvers); entry points call this before ``hydra.main``
    runs."""
    register_resolvers()
    from s2policy.data.collect import CollectConfig
    from s2policy.data.formats.lerobot.convert import LeRobotConfig
    from s2policy.data.formats.robomimic import RobomimicConfig
    from s2policy.data.store import StoreConfig
    from s2policy.encoders.s2 import EncoderConfig
    from s2policy.evaluation.approx import ApproxConfig
    from s2policy.evaluation.offline import OfflineConfig
    from s2policy.evaluation.probe import ProbeConfig
    from s2policy.evaluation.publish import PublishConfig
    from s2policy.evaluation.report import ReportConfig
    from s2policy.evaluation.rollout import EvalConfig
    from s2policy.features.command import CacheCommandConfig
    from s2policy.policies.diffusion import DiffusionPolicyConfig
    from s2policy.policies.mlp import MLPPolicyConfig
    from s2policy.pretraining.train import PretrainConfig
    from s2policy.robot.keys import RobotKeysConfig
    from s2policy.robot.run import RobotRunConfig
    from s2policy.tracking import LoggerConfig
    from s2policy.training.config import RunConfig, TrainConfig
    from s2policy.viz import VizConfig

    cs = ConfigStore.instance()
    cs.store(name="collect_schema", node=CollectConfig)
    cs.store(name="cache_schema", node=CacheCommandConfig)
    cs.store(name="run_schema", node=RunConfig)
    cs.store(name="eval_schema", node=EvalConfig)
    cs.store(name="pretrain_schema", node=PretrainConfig)
    cs.store(group="policy", name="mlp_schema", node=MLPPolicyConfig)
    cs.store(group="policy", name="diffusion_schema", node=DiffusionPolicyConfig)
    cs.store(group="train", name="train_schema", node=TrainConfig)
    cs.store(group="logger", name="logger_schema", node=LoggerConfig)
    cs.store(name="report_schema", node=ReportConfig)
    cs.store(name="probe_schema", node=ProbeConfig)
    cs.store(name="approx_schema", node=ApproxConfig)
    # One typed encoder, for composing ``+encoder=<name>`` on its own (the probe's encoders).
    cs.store(name="encoder_choice_schema", node={"encoder": EncoderConfig})
    cs.store(name="robomimic_schema", node=RobomimicConfig)
    cs.store(name="lerobot_schema", node=LeRobotConfig)
    cs.store(name="robot_schema", node=RobotRunConfig)
    cs.store(name="store_schema", node=StoreConfig)
    cs.store(name="robot_keys_schema", node=RobotKeysConfig)
    cs.store(name="viz_schema", node=VizConfig)
    cs.store(name="offline_schema", node=OfflineConfig)
    cs.store(name="publish_schema", node=PublishConfig)


def run_hydra(
    config_name: str,
    job_name: str,
    body: Callable[[Any], None],
    argv: Sequence[str] | None = None,
) -> None:
    """:func:`s2policy.hydra_app.run_hydra` with every schema registered."""
    _run_hydra(config_name, job_name, body, argv, register_configs)
