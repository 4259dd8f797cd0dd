"""Typed config schemas registered with hydra's ConfigStore (the YAML in ``configs/`` overrides),
and the one way every command runs: :func:`run_hydra`."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore

#: The repository's ``configs/`` folder (beside the package; it is installed editable).
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def register_configs() -> None:
    """Register every schema; entry points call this before ``hydra.main`` runs."""
    from s2policy.data.collect import CollectConfig
    from s2policy.data.replay_buffer import StoreConfig
    from s2policy.data.robomimic_io import RobomimicConfig
    from s2policy.encoders.s2 import EncoderConfig
    from s2policy.evaluation.probe import ProbeConfig
    from s2policy.evaluation.report import ReportConfig
    from s2policy.evaluation.rollout import EvalConfig
    from s2policy.features.command import CacheCommandConfig
    from s2policy.policies.diffusion import DiffusionPolicyConfig
    from s2policy.policies.mlp import MLPPolicyConfig
    from s2policy.pretraining.train import PretrainConfig
    from s2policy.robot.keys import RobotKeysConfig
    from s2policy.robot.run import RobotRunConfig
    from s2policy.training.config import RunConfig, TrainConfig

    cs = ConfigStore.instance()
    cs.store(name="collect_schema", node=CollectConfig)
    cs.store(name="cache_schema", node=CacheCommandConfig)
    cs.store(name="run_schema", node=RunConfig)
    cs.store(name="eval_schema", node=EvalConfig)
    cs.store(name="pretrain_schema", node=PretrainConfig)
    cs.store(group="policy", name="mlp_schema", node=MLPPolicyConfig)
    cs.store(group="policy", name="diffusion_schema", node=DiffusionPolicyConfig)
    cs.store(group="train", name="train_schema", node=TrainConfig)
    cs.store(name="report_schema", node=ReportConfig)
    cs.store(name="probe_schema", node=ProbeConfig)
    # One typed encoder, for composing ``+encoder=<name>`` on its own (the probe's encoders).
    cs.store(name="encoder_choice_schema", node={"encoder": EncoderConfig})
    cs.store(name="robomimic_schema", node=RobomimicConfig)
    cs.store(name="robot_schema", node=RobotRunConfig)
    cs.store(name="store_schema", node=StoreConfig)
    cs.store(name="robot_keys_schema", node=RobotKeysConfig)


def to_object(cfg):
    """Hydra ``DictConfig`` -> the typed dataclass (runs each ``__post_init__`` validation)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_object(cfg)


def check_choices() -> None:
    """Refuse a config group choice that names a schema (``policy=mlp_schema``): a schema is
    what a group's YAML files are checked against, not one of them, and its defaults would run
    silently."""
    from hydra.core.hydra_config import HydraConfig

    for group, choice in HydraConfig.get().runtime.choices.items():
        if group.startswith("hydra") or not isinstance(choice, str):
            continue
        if choice.endswith("_schema"):
            folder = CONFIG_DIR / group.split("@")[0]
            options = sorted(p.stem for p in folder.glob("*.yaml"))
            raise ValueError(
                f"{group}={choice} names the schema of configs/{group.split('@')[0]}/, not a "
                f"config; choose one of {options}"
            )


def run_hydra(
    config_name: str,
    job_name: str,
    body: Callable[[Any], None],
    argv: Sequence[str] | None = None,
) -> None:
    """Run ``body(typed config)`` as the hydra app of ``configs/<config_name>.yaml``.

    The command line (``key=value`` overrides, ``-m``, ``--help``, ...) is ``sys.argv[1:]``, or
    ``argv`` for in-process calls. ``job_name`` is hydra's ``hydra.job.name`` (log file, SLURM
    job name): that of the command's script, wherever the entry point lives.
    """
    import hydra

    import envs  # noqa: F401  (chooses the headless GL backend before mujoco is imported)

    register_configs()

    def task(dict_cfg) -> None:
        check_choices()
        body(to_object(dict_cfg))

    # hydra names the job after the task function's module (its config path is absolute).
    task.__module__ = job_name
    app = hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)(task)
    if argv is None:
        app()
        return
    saved = sys.argv
    sys.argv = [job_name, *map(str, argv)]
    try:
        app()
    finally:
        sys.argv = saved
