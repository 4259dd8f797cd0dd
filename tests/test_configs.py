"""Every YAML file under ``configs/`` composes with hydra's compose API and validates as its typed
dataclass (``__post_init__`` checks included): each top-level config, each file of each config
group through every top-level config that selects from that group, each experiment and each
value its sweeps name. Composition only: nothing is built or trained here, except the MAE
pretraining command, run for two steps on a tiny store."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.initialize import get_gh_backup, restore_gh_from_backup
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from s2policy.configs import CONFIG_DIR, register_configs, to_object
from s2policy.hydra_app import check_choices

ROOT = Path(__file__).resolve().parents[1]


def _types() -> dict[str, type]:
    from s2policy.data.collect import CollectConfig
    from s2policy.data.formats.lerobot.convert import LeRobotConfig
    from s2policy.data.formats.robomimic import RobomimicConfig
    from s2policy.data.store import StoreConfig
    from s2policy.evaluation.approx import ApproxConfig
    from s2policy.evaluation.offline import OfflineConfig
    from s2policy.evaluation.probe import ProbeConfig
    from s2policy.evaluation.publish import PublishConfig
    from s2policy.evaluation.report import ReportConfig
    from s2policy.evaluation.rollout import EvalConfig
    from s2policy.features.command import CacheCommandConfig
    from s2policy.pretraining.train import PretrainConfig
    from s2policy.robot.keys import RobotKeysConfig
    from s2policy.robot.run import RobotRunConfig
    from s2policy.training.config import RunConfig
    from s2policy.viz import VizConfig

    return {
        "approx": ApproxConfig,
        "config": RunConfig,
        "cache": CacheCommandConfig,
        "collect": CollectConfig,
        "eval": EvalConfig,
        "lerobot": LeRobotConfig,
        "offline": OfflineConfig,
        "pretrain": PretrainConfig,
        "probe": ProbeConfig,
        "publish": PublishConfig,
        "report": ReportConfig,
        "robomimic": RobomimicConfig,
        "robot": RobotRunConfig,
        "robot_keys": RobotKeysConfig,
        "store": StoreConfig,
        "viz": VizConfig,
    }


#: Top-level configs -> the overrides their mandatory (``???``) keys need.
TOP_LEVEL = {
    "approx": [],
    "config": [],
    "cache": [],
    "collect": [],
    "eval": ["checkpoint=x"],
    "lerobot": ["action=import", "src=a", "dst=b.zarr"],
    "offline": ["checkpoint=x"],
    "pretrain": [],
    "probe": [],
    "publish": [],
    "report": ["runs=[multirun]"],
    "robomimic": ["action=import", "src=a.hdf5", "dst=b.zarr"],
    "robot": ["checkpoint=x"],
    "robot_keys": ["dir=keys", "name=server"],
    "store": ["action=inspect", "store=s.zarr"],
    "viz": ["dataset=x.zarr"],
}

#: Config groups (folders) -> every (top-level config, override key) that selects from them.
GROUPS = {
    "encoder": [("config", "encoder"), ("cache", "encoder"), ("eval", "encoder")],
    "encoder/weights": [("config", "encoder/weights"), ("cache", "encoder/weights")],
    "policy": [("config", "policy")],
    "train": [("config", "train")],
    # pretrain.yaml's ``task@task`` is the package the group has anyway: its key is ``task``.
    "task": [("config", "task"), ("collect", "task"), ("eval", "task"), ("pretrain", "task")],
    "randomization": [
        ("config", "randomization@eval.randomization"),
        ("collect", "randomization"),
        ("eval", "randomization"),
    ],
    "logger": [("config", "logger"), ("eval", "logger"), ("pretrain", "logger")],
    "experiment": [("config", "experiment")],
    "hydra/launcher": [("config", "hydra/launcher")],
}


def _package(key: str) -> str:
    """Where a group's choice lands in the composed config (``randomization@eval.randomization``
    -> ``eval.randomization``; ``hydra/launcher`` -> ``hydra.launcher``)."""
    group, _, package = key.partition("@")
    return package or group.replace("/", ".")


def _group_files(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def _leaves(node, path: tuple = ()):
    """(key path, value) of every leaf of a YAML file's mapping, interpolations left out."""
    if isinstance(node, DictConfig):
        for key in node:
            if key != "defaults":
                yield from _leaves(node._get_node(key), (*path, key))
        return
    value = OmegaConf.to_container(node) if isinstance(node, ListConfig) else node._value()
    if not (isinstance(value, str) and "${" in value):
        yield path, value


def _get(cfg, path: tuple):
    """The resolved value at ``path`` (keys may hold dots: ``params["train.seed"]``)."""
    for key in path:
        cfg = cfg[key]
    return OmegaConf.to_container(cfg) if isinstance(cfg, (DictConfig, ListConfig)) else cfg


def _defaults(path: Path) -> list:
    return OmegaConf.to_container(OmegaConf.load(path)).get("defaults", [])


@pytest.fixture(scope="module", autouse=True)
def hydra_configs():
    """hydra initialized on ``configs/`` (whatever another test left initialized is restored)."""
    register_configs()
    backup, hydra_cfg = get_gh_backup(), HydraConfig.instance().cfg
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            yield
    finally:
        restore_gh_from_backup(backup)
        HydraConfig.instance().cfg = hydra_cfg


def compose_typed(name: str, overrides=()):
    """``(typed config, composed DictConfig with its hydra node)`` as ``run_hydra`` sees them:
    the ``${hydra:...}`` interpolations (``run_name``, ``output_dir``) resolved, the choices
    checked, then :func:`to_object` (every ``__post_init__``)."""
    cfg = compose(name, [*TOP_LEVEL[name], *overrides], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = "/run/output"  # what a real run sets
    HydraConfig.instance().set_config(cfg)
    check_choices()
    composed = cfg.copy()
    with open_dict(cfg):
        del cfg["hydra"]
    return to_object(cfg), composed


def test_every_yaml_file_is_listed_here():
    """A new top-level config or group file is composed by this module, or this test fails."""
    listed = {f"{n}.yaml" for n in TOP_LEVEL} | {
        f"{g}/{n}.yaml" for g in GROUPS for n in _group_files(g)
    }
    found = {str(p.relative_to(CONFIG_DIR)) for p in CONFIG_DIR.rglob("*.yaml")}
    assert found == listed
    assert all(_group_files(g) for g in GROUPS)


def test_every_group_a_top_level_config_selects_is_composed_through_it():
    for name in TOP_LEVEL:
        for entry in _defaults(CONFIG_DIR / f"{name}.yaml"):
            if not isinstance(entry, dict):
                continue  # the schema, _self_
            (key,) = entry
            if key.startswith("override "):
                continue  # hydra's own groups (job_logging)
            group, _, package = key.removeprefix("optional ").partition("@")
            key = group if package in ("", group) else f"{group}@{package}"
            assert (name, key) in GROUPS[group], (name, key)


@pytest.mark.parametrize("name", list(TOP_LEVEL))
def test_top_level_config_composes_to_its_dataclass(name):
    cfg, composed = compose_typed(name)
    assert type(cfg) is _types()[name]
    given = {o.split("=")[0] for o in TOP_LEVEL[name]}
    for path, value in _leaves(OmegaConf.load(CONFIG_DIR / f"{name}.yaml")):
        if ".".join(path) not in given:
            assert _get(composed, path) == value, path


def test_training_run_name_follows_the_choices():
    cfg, _ = compose_typed("config", ["encoder=vit_s_s2", "policy=diffusion", "train.seed=3"])
    assert cfg.run_name == "vit_s_s2_diffusion_seed3" and cfg.output_dir == "/run/output"
    cfg, _ = compose_typed("pretrain", ["backbone=vit_t"])
    assert cfg.name == "mae_vit_t" and cfg.output_dir == "/run/output"


GROUP_CASES = [
    pytest.param(group, file, name, key, id=f"{name}:{key}={file}")
    for group, users in GROUPS.items()
    for file in _group_files(group)
    for name, key in users
]


@pytest.mark.parametrize(("group", "file", "name", "key"), GROUP_CASES)
def test_group_file_composes_where_it_belongs(group, file, name, key):
    cfg, composed = compose_typed(name, [f"{key}={file}"])
    assert type(cfg) is _types()[name]
    assert composed.hydra.runtime.choices[key] == file
    yaml = OmegaConf.load(CONFIG_DIR / group / f"{file}.yaml")
    header = re.match(r"# @package (\S+)", (CONFIG_DIR / group / f"{file}.yaml").read_text())
    package = () if group == "experiment" else tuple(_package(key).split("."))  # _global_
    if header and header.group(1) != "_global_":
        package = tuple(header.group(1).split("."))
    for path, value in _leaves(yaml):
        assert _get(composed, (*package, *path)) == value, (*package, *path)
    if group == "experiment":  # the experiment's own group choices are made
        for entry in _defaults(CONFIG_DIR / group / f"{file}.yaml"):
            if isinstance(entry, dict):
                ((override, choice),) = entry.items()
                sub = override.removeprefix("override /")
                assert composed.hydra.runtime.choices[sub] == choice, sub
    if group == "hydra/launcher":
        assert "submitit" in composed.hydra.launcher._target_


def _sweeps():
    for file in _group_files("experiment"):
        cfg = compose("config", [f"experiment={file}"], return_hydra_config=True)
        for key, values in (cfg.hydra.sweeper.params or {}).items():
            for value in str(values).split(","):
                yield file, key, value


def test_every_sweep_value_of_the_experiments_composes():
    cases = list(_sweeps())
    assert {f for f, *_ in cases} == {
        "multitask", "multitask_large", "ladder", "ladder_demos", "demo_ladder"
    }  # fmt: skip
    for file, key, value in cases:
        cfg, composed = compose_typed("config", [f"experiment={file}", f"{key}={value}"])
        if key in composed.hydra.runtime.choices:
            assert composed.hydra.runtime.choices[key] == value
        else:
            assert str(OmegaConf.select(composed, key)) == value
        if file in ("multitask_large", "ladder", "ladder_demos", "demo_ladder"):
            assert cfg.dataset == f"datasets/{cfg.task.name}_200.zarr"
        if file == "demo_ladder":  # the ladder's token maps at demo size
            assert cfg.encoder.pool == "tokens" and cfg.train.steps == 2000
        if file in ("ladder", "ladder_demos"):  # cpu_large's recipe on every rung: token maps
            assert cfg.train.augment.views == 4 and cfg.policy.n_action_steps == 1
            assert cfg.encoder.pool == "tokens" and cfg.policy.spatial_head == "softmax"
            if cfg.encoder.is_image:  # each rung its own converged weights
                assert cfg.encoder.weights == f"mae4c_{cfg.encoder.backbone}"
            if cfg.encoder.is_image:  # the run names say the weights and the pooling
                assert cfg.run_name.startswith(f"{value}_mae4c_tok_") or key != "encoder"
        if file == "ladder_demos":
            assert cfg.run_tag == f"_n{cfg.train.n_demos}"


def test_the_ladder_class_token_rows_and_equal_step_weights_are_one_override_away():
    cfg, _ = compose_typed("config", ["experiment=ladder", "encoder=mini", "encoder.pool=cls"])
    assert cfg.encoder.pool == "cls" and cfg.encoder.weights == "mae4c_vit_mini"
    assert cfg.run_name == "mini_mae4c_mlp_seed0"
    cfg, _ = compose_typed(
        "config", ["experiment=ladder", "encoder=micro_s2", "encoder/weights=mae4"]
    )
    assert cfg.encoder.weights == "mae4_vit_micro" and cfg.encoder.scales == (64, 128)
    assert cfg.run_name == "micro_s2_mae4_tok_mlp_seed0"


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        (["encoder=micro"], "micro_mlp_seed0"),
        (["encoder=micro", "encoder/weights=random"], "micro_mlp_seed0"),
        (["encoder=micro", "encoder/weights=mae"], "micro_mae_mlp_seed0"),
        # weights given directly are in the name too: no clash with the shipped ones
        (["encoder=micro", "encoder.weights=my_mae_vit_micro"], "micro_my_mae_mlp_seed0"),
        (["encoder=micro", "encoder.weights=ckpt/enc.safetensors"], "micro_enc_mlp_seed0"),
        (["experiment=cpu_large", "encoder.weights=mae_vit_micro"], "micro_s2_mae_tok_mlp_seed0"),
        (
            ["encoder=micro_s2", "encoder/weights=hub", "encoder.pool=mean"],
            "micro_s2_hub_mean_mlp_seed0",
        ),
    ],
)
def test_run_names_follow_the_weights_actually_loaded(overrides, name):
    cfg, _ = compose_typed("config", overrides)
    assert cfg.run_name == name


@pytest.mark.parametrize("file", _group_files("encoder"))
def test_encoder_backbone_is_registered_and_scales_are_tile_multiples(file):
    from s2policy.encoders.backbones import BACKBONES
    from s2policy.encoders.s2 import EncoderConfig

    enc = OmegaConf.load(CONFIG_DIR / "encoder" / f"{file}.yaml")
    if not EncoderConfig(**OmegaConf.to_container(enc)).is_image:
        assert file in ("blind", "oracle")  # no image backbone to check
        return
    assert enc.backbone in BACKBONES
    spec = BACKBONES[enc.backbone]
    tile = enc.base_size or min(enc.scales)
    assert all(s % tile == 0 for s in enc.scales), list(enc.scales)
    patch = spec.overrides.get("patch_size") or int(re.search(r"patch(\d+)", spec.timm_name)[1])
    assert tile % patch == 0
    if file.startswith("vit_"):
        assert enc.scales[0] == spec.img_size  # the backbone's own tile (224)
        suffix = file.removeprefix(enc.backbone)
        expected = {"": 1, "_s2": 2, "_s2x3": 3}[suffix]
        assert list(enc.scales) == [tile * k for k in range(1, expected + 1)]


def test_pretrain_mae_script_runs_two_steps(demo_store, tmp_path):
    cmd = [
        sys.executable,
        str(ROOT / "pretrain_mae.py"),
        "backbone=vit_nano",
        "img_size=32",
        "scales=[32,64]",
        f"datasets=[{demo_store}]",
        "steps=2",
        "batch_size=8",
        "decoder_dim=32",
        "decoder_heads=2",
        "warmup_steps=1",
        "log_every=1",
        "device=cpu",
        "name=mae_tiny",
        f"weights_dir={tmp_path}/w",
        f"hydra.run.dir={tmp_path}/run",
        "task.env.image_size=[32,32]",
        "task.env.shadow_size=0",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "use encoder.weights=mae_tiny" in proc.stdout
    steps = [json.loads(r)["step"] for r in (tmp_path / "run" / "metrics.jsonl").open()]
    assert steps[-1] == 2
    meta = json.loads((tmp_path / "w" / "mae_tiny.json").read_text())
    assert meta["backbone"] == "vit_nano"

    from s2policy.encoders.s2 import EncoderConfig, build_encoder

    enc = build_encoder(
        EncoderConfig(
            backbone="vit_nano", scales=(32,), weights=str(tmp_path / "w" / "mae_tiny.safetensors")
        )
    )
    assert enc.spec()["backbone"]["weights"]  # the pretrained weights load into the encoder
