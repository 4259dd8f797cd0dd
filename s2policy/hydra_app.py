"""The one way every command runs: a hydra app of ``configs/<name>.yaml`` whose config is
checked by a typed dataclass (:func:`run_hydra`). A leaf module: it imports no other part of
s2policy but :mod:`s2policy.fileio` (a leaf too), so any package can give itself a command line
without depending on the others."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from s2policy.fileio import DiskFullError, LockedError

#: The repository's ``configs/`` folder (beside the package; it is installed editable).
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def run_group(dataset: str, task: str) -> str:
    """The folder a training run is grouped in (``outputs/<group>/<run>``): the simulated task
    the store ``dataset`` records, else — a dataset-defined run, e.g. a robot's data — the
    store's name, else (no store yet) ``task``. Read from the store's ``zarr.json`` alone."""
    import json

    meta = Path(str(dataset)) / "zarr.json"
    try:
        attrs = json.loads(meta.read_text()).get("attributes", {})
    except (OSError, ValueError):
        return task
    if attrs.get("task") and "env" in attrs:
        return str(attrs["task"])
    return Path(str(dataset)).name.removesuffix(".zarr")


#: The short names of poolings in run names (the class token is the default: none).
POOL_TAGS = {"cls": "", "tokens": "_tok", "mean": "_mean"}


def weights_tag(weights: Any, backbone: Any) -> str:
    """The weights' short name in a run name: ``mae4`` for ``mae4_{backbone}`` or
    ``mae4_vit_micro``, a file's stem for a path, ``hub``; none for random init."""
    if weights in (None, "None", "null", "", "random"):
        return ""
    name = str(weights)
    if "/" in name or name.endswith((".safetensors", ".pth", ".pt")):
        name = Path(name).stem
    for suffix in ("_{backbone}", f"_{backbone}"):
        name = name.removesuffix(suffix)
    return f"_{name}"


def encoder_name(encoder: str, weights: Any, backbone: Any, pool: str) -> str:
    """A run's encoder in its name: the ``encoder=`` choice, then the weights actually loaded
    (``encoder.weights``, by :func:`weights_tag`) and the pooling when they are not the defaults
    (``micro_s2_mae4_tok``); the blind and oracle rows have neither."""
    if encoder in ("blind", "oracle"):
        return encoder
    return f"{encoder}{weights_tag(weights, backbone)}{POOL_TAGS.get(str(pool), f'_{pool}')}"


def register_resolvers() -> None:
    """The project's OmegaConf resolvers (``${s2policy_run_group:dataset,task}``,
    ``${s2policy_encoder_name:encoder,weights,backbone,pool}``)."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("s2policy_run_group", run_group, replace=True)
    OmegaConf.register_new_resolver("s2policy_encoder_name", encoder_name, replace=True)


def schemas(**nodes: Any) -> Callable[[], None]:
    """A registration of these schemas by name (``report_schema=ReportConfig``)."""

    def register() -> None:
        from hydra.core.config_store import ConfigStore

        cs = ConfigStore.instance()
        for name, node in nodes.items():
            cs.store(name=name, node=node)

    return register


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


def write_hydra_record(output_dir: str | Path, config: dict[str, Any]) -> None:
    """``<output_dir>/.hydra/{config,hydra,overrides}.yaml``, as hydra writes them with its
    ``output_subdir`` set, for commands that keep it null so that a refused run leaves its
    directory untouched and write the record only once their checks passed (``config``: the
    resolved, typed config)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    hydra_cfg = HydraConfig.get()
    folder = Path(output_dir) / ".hydra"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
    (folder / "hydra.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_cfg})))
    (folder / "overrides.yaml").write_text(OmegaConf.to_yaml(hydra_cfg.overrides.task))


def run_hydra(
    config_name: str,
    job_name: str,
    body: Callable[[Any], None],
    argv: Sequence[str] | None = None,
    register: Callable[[], None] | None = None,
) -> None:
    """Run ``body(typed config)`` as the hydra app of ``configs/<config_name>.yaml``, after
    ``register()`` put the schemas it needs in hydra's ConfigStore.

    The command line (``key=value`` overrides, ``-m``, ``--help``, ...) is ``sys.argv[1:]``, or
    ``argv`` for in-process calls. ``job_name`` is hydra's ``hydra.job.name`` (log file, SLURM
    job name): that of the command's script, wherever the entry point lives.
    """
    import hydra

    import envs  # noqa: F401  (chooses the headless GL backend before mujoco is imported)

    register_resolvers()
    if register is not None:
        register()

    def task(dict_cfg) -> None:
        try:
            check_choices()
            body(to_object(dict_cfg))
        except (ValueError, FileNotFoundError, FileExistsError, LockedError, DiskFullError) as err:
            # bad input: its one sentence, not a traceback (HYDRA_FULL_ERROR=1 shows one)
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

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
