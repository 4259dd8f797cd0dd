"""The bad-input table: every case gets one clear sentence and loses nothing.

Each case breaks one input (a config value, a store, a cache, a checkpoint, a robomimic file, a
robot), runs the operation a user would run, and checks that it fails with one sentence (no line
break) matching the expected text, and that the data it was given — the store, the run
directory — is byte for byte what it was before. ``docs/bad_inputs.md`` is this table rendered
from the messages the cases actually produce; the last test fails when it is out of date
(``S2POLICY_WRITE_DOCS=1 pytest tests/test_bad_inputs.py`` rewrites it).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from s2policy.data.collect import CollectConfig, collect_demos
from s2policy.data.replay_buffer import ReplayBuffer
from s2policy.data.robomimic_io import import_robomimic
from s2policy.encoders.s2 import EncoderConfig, build_encoder
from s2policy.evaluation.approx import ApproxConfig
from s2policy.evaluation.config import EvalConfig
from s2policy.evaluation.rollout import evaluate
from s2policy.features.augment import AugmentConfig
from s2policy.features.cache import build_cache, list_caches, remove_cache
from s2policy.policies.artifact import load, training_state
from s2policy.policies.mlp import MLPPolicyConfig
from s2policy.policies.runner import PolicyRunner
from s2policy.robot.loop import LoopConfig
from s2policy.robot.run import check_robot
from s2policy.robot.safety import SafetyConfig
from s2policy.task import TaskConfig
from s2policy.tracking import LoggerConfig
from s2policy.training.config import RunConfig, TrainConfig
from s2policy.training.loop import train

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "bad_inputs.md"
TASK = TaskConfig(env={"image_size": (32, 32), "shadow_size": 0})


@dataclass
class Ctx:
    """What a case works on: its own copies of a small store and a trained run."""

    tmp: Path
    store: Path
    run: Path
    run_config: Callable
    #: The store the run was trained on (resuming must name the same dataset).
    source: Path

    @property
    def ckpt(self) -> Path:
        return self.run / "checkpoint"

    def config(self, **train):
        return self.run_config(self.store, self.run, small_mlp(), steps=10, **train)


@dataclass
class Case:
    area: str
    what: str
    run: Callable[[Ctx], object]
    error: str  # regex the one sentence must match
    guard: str | None = None  # "store" or "run": must be byte-identical afterwards
    setup: Callable[[Ctx], object] | None = None  # breaks the input before the guard's digest


def small_mlp(**kw):
    return MLPPolicyConfig(**{"horizon": 8, "n_action_steps": 4, "hidden_dims": [32], **kw})


def digest(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(path)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


# ------------------------------------------------------------------ the operations of the cases
def _edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    info = json.loads(path.read_text())
    edit(info)
    path.write_text(json.dumps(info))


def _set_array(store: Path, key: str, index, value) -> None:
    arr = zarr.open_group(str(store), mode="r+")[key]
    values = arr[:]
    values[index] = value
    arr[:] = values


def _eval(ctx: Ctx, **kw):
    base = dict(checkpoint=str(ctx.run), n_episodes=1, n_envs=1, n_videos=0, device="cpu",
                max_episode_steps=3, output_dir=str(ctx.tmp / "eval"))  # fmt: skip
    return evaluate(EvalConfig(**{**base, **kw}))


def _train_with(ctx: Ctx, resume=False, encoder=None, policy=None, **train_kw):
    cfg = ctx.run_config(ctx.source, ctx.run, policy or small_mlp(), encoder=encoder, steps=20,
                         resume=resume, **train_kw)  # fmt: skip
    return train(cfg)


def _new_run(ctx: Ctx, policy=None, encoder=None, task=None, store=None):
    cfg = ctx.run_config(store or ctx.store, ctx.tmp / "new", policy or small_mlp(),
                         encoder=encoder, steps=5)  # fmt: skip
    if task is not None:
        cfg.task = task
    return train(cfg)


def _robomimic_file(ctx: Ctx, content: bytes | None = None, mutate=None) -> Path:
    import h5py

    path = ctx.tmp / "demos.hdf5"
    if content is not None:
        path.write_bytes(content)
        return path
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        for i, n in enumerate((5, 4)):
            demo = data.create_group(f"demo_{i}")
            demo.attrs["num_samples"] = n
            demo.create_dataset("actions", data=np.zeros((n, 7), np.float32))
            demo.create_dataset("obs/eef", data=np.zeros((n, 3), np.float32))
        if mutate:
            mutate(f)
    return path


class Payload:
    """Unpickling an instance would need this class, i.e. code: never loaded."""


def _pickle_state(ctx: Ctx):
    torch.save({"step": 1, "payload": Payload()}, ctx.ckpt / "training_state.pt")


def _cache_dir(ctx: Ctx) -> Path:
    (fp,) = [c.fingerprint for c in list_caches(ctx.store)]
    return ctx.store / "features" / fp


def _drop_cache_attrs(ctx: Ctx) -> None:
    meta = _cache_dir(ctx) / "zarr.json"
    _edit_json(meta, lambda doc: doc.update(attributes={}))


NANO = EncoderConfig(backbone="vit_nano", scales=(32, 64))


def _swap_encoder(info: dict) -> None:
    """Another encoder in the config with the spec it really has: no check of spec vs config
    catches it, only the feature shapes."""
    other = EncoderConfig(backbone="vit_nano", scales=(32,))
    info["encoder"]["config"] = other.to_dict()
    info["encoder"]["spec"] = build_encoder(other).spec()


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


ROBOT_SPEC = {"cameras": ["front"], "image_size": [32, 32], "action_dim": 4}

CASES = [
    # collection and configs
    Case("collection", "unknown task name", lambda c: TaskConfig(name="lift"),
         r"unknown task 'lift'; known: cube_pick"),
    Case("collection", "`n_episodes=0`",
         lambda c: CollectConfig(task=TASK, n_episodes=0, output=str(c.tmp / "x.zarr")),
         r"n_episodes must be >= 1, got 0"),
    Case("collection", "appending with other environment settings",
         lambda c: collect_demos(CollectConfig(task=TaskConfig(env={"image_size": (48, 48),
                                 "shadow_size": 0}), n_episodes=7, output=str(c.store))),
         r"was collected with other settings \(env.image_size: store has \[32, 32\], config "
         r"has \[48, 48\]; image_size: .*\); collect into a new output", "store"),
    Case("collection", "appending to demonstrations of another expert version",
         lambda c: collect_demos(CollectConfig(task=TASK, n_episodes=7, output=str(c.store))),
         r"was collected with other settings \(expert_version: store has 0, config has 1\); "
         r"collect into a new output", "store",
         setup=lambda c: zarr.open_group(c.store, mode="a").attrs.update(expert_version=0)),
    # stores
    Case("store", "a non-monotonic `meta/episode_ends`",
         lambda c: ReplayBuffer.open(c.store, "a"),
         r"is damaged, not an interrupted write: meta/episode_ends\[3\] = \d+ is not greater "
         r"than .*nothing was changed .*action=repair", "store",
         setup=lambda c: _set_array(c.store, "meta/episode_ends", 3,
                                    ReplayBuffer.open(c.store).episode_ends[1])),
    Case("store", "a deleted chunk file of committed frames",
         lambda c: ReplayBuffer.open(c.store)["front"][:],
         r"data/front is missing the chunk file of committed steps 0-\d+", "store",
         setup=lambda c: (c.store / "data/front/c/0/0/0/0").unlink()),
    Case("store", "a truncated chunk file of committed frames",
         lambda c: ReplayBuffer.open(c.store)["front"][:],
         r"data/front cannot be read at committed steps 0-\d+: chunk file c/0/0/0/0 is "
         r"truncated or damaged", "store",
         setup=lambda c: _truncate(c.store / "data/front/c/0/0/0/0")),
    Case("store", "NaN in a stored action", _new_run,
         r"'action' contains NaN or inf \(first at step 7", "store",
         setup=lambda c: _set_array(c.store, "data/action", (7, 2), np.nan)),
    Case("store", "demonstrations of another task",
         lambda c: _new_run(c, task=TaskConfig(name="push")),
         r"holds demonstrations of task 'cube_pick', but the run is for task 'push'", "store"),
    Case("store", "a camera the store does not have",
         lambda c: _new_run(c, policy=small_mlp(cameras=["top"])),
         r"needs camera\(s\) \['top'\], but .* has \['front', 'wrist'\]", "store"),
    # caches
    Case("cache", "a missing cache with `train.build_cache=false`",
         lambda c: train(c.run_config(c.store, c.tmp / "new", small_mlp(), steps=5,
                                      build_cache=False,
                                      encoder=EncoderConfig(backbone="vit_nano", scales=(32,),
                                                            init_seed=7))),
         r"no feature cache in .* for encoder vit_nano scales=\[32\] .*Build it with", "store"),
    Case("cache", "removing a cache that does not exist",
         lambda c: remove_cache(c.store, "f" * 16),
         r"no cache '<hash>' in .*; caches: \['<hash>'\]", "store"),
    Case("cache", "a deleted chunk file of computed features",
         lambda c: list_caches(c.store)[0].features("front")[:],
         r"camera 'front' steps 0-\d+ have no chunk file although marked done; run python "
         r"cache_features.py action=verify", "store",
         setup=lambda c: (_cache_dir(c) / "front/c/0/0").unlink()),
    Case("cache", "a truncated chunk file of computed features",
         lambda c: list_caches(c.store)[0].features("front")[:],
         r"camera 'front' steps 0-\d+ do not decode \(chunk file truncated or corrupt\)",
         "store", setup=lambda c: _truncate(_cache_dir(c) / "front/c/0/0")),
    Case("cache", "a cache whose attributes were lost after chunks were computed",
         lambda c: build_cache(c.store, build_encoder(NANO), chunk_steps=64),
         r"has \d+ computed chunks but no attributes .* it is kept: remove it with", "store",
         setup=_drop_cache_attrs),
    # training
    Case("training", "`train.steps=0`", lambda c: TrainConfig(steps=0),
         r"train.steps must be >= 1, got 0"),
    Case("training", "a horizon shorter than the executed actions",
         lambda c: small_mlp(horizon=4, n_action_steps=4),
         r"horizon 4 must cover n_obs_steps - 1 \+ n_action_steps = 5"),
    Case("training", "`policy.cameras=[]` with an encoder",
         lambda c: _new_run(c, policy=small_mlp(cameras=[])),
         r"policy.cameras=\[\] leaves encoder 'vit_nano' no camera; a blind .* is encoder=blind",
         "store"),
    Case("training", "training again into a run directory that holds a checkpoint",
         lambda c: _train_with(c), r"already holds a trained run \(checkpoint\); continue it with "
         r"train.resume=true, replace it with train.overwrite=true", "run"),
    Case("training", "resuming with another encoder seed",
         lambda c: _train_with(c, resume=True, encoder=EncoderConfig(
             backbone="vit_nano", scales=(32, 64), init_seed=1)),
         r"cannot resume .*encoder.init_seed: 0 -> 1", "run"),
    Case("training", "resuming with other pretrained weights",
         lambda c: _train_with(c, resume=True, encoder=EncoderConfig(
             backbone="vit_nano", scales=(32, 64), weights=str(c.tmp / "w.safetensors"))),
         r"cannot resume .*encoder.weights: None ->", "run"),
    Case("training", "resuming with augmented views in the feature cache",
         lambda c: _train_with(c, resume=True, augment=AugmentConfig(views=2)),
         r"cannot resume .*train.augment.views: 0 -> 2", "run"),
    Case("training", "an unknown `policy.spatial_head`",
         lambda c: small_mlp(spatial_head="keypoint"),
         r"unknown spatial_head 'keypoint'; known: attention, softmax"),
    Case("training", "rollout selection on the evaluation's seeds",
         lambda c: RunConfig(policy=small_mlp(), eval=EvalConfig(n_episodes=100),
                             train=TrainConfig(select="rollout", select_seed=100_050)),
         r"train.select=rollout would choose the weights on evaluation seeds "
         r"\(<n>..<n>\); move train.select_seed away from eval.seed"),
    Case("training", "`train.augment.views=-1`", lambda c: AugmentConfig(views=-1),
         r"augment.views and augment.shift_px must be >= 0, got -1, 4"),
    Case("training", "resuming after a change of policy shape",
         lambda c: _train_with(c, resume=True, policy=small_mlp(hidden_dims=[64])),
         r"cannot resume .*policy.hidden_dims: \[32\] -> \[64\]", "run"),
    # checkpoints
    Case("checkpoint", "no checkpoint at the path", lambda c: load(c.tmp / "nothing"),
         r"no policy checkpoint at .*train_policy.py"),
    Case("checkpoint", "truncated `model.safetensors`", lambda c: load(c.run),
         r"model.safetensors is not a readable safetensors file", "run",
         setup=lambda c: _truncate(c.ckpt / "model.safetensors")),
    Case("checkpoint", "`policy.json` edited to another policy shape", lambda c: load(c.run),
         r"does not fit the policy described by .*policy.json", "run",
         setup=lambda c: _edit_json(c.ckpt / "policy.json",
                                    lambda i: i["policy"].update(hidden_dims=[64]))),
    Case("checkpoint", "`policy.json` edited to another encoder (config and spec alike)",
         lambda c: PolicyRunner(load(c.run)),
         r"gives features of shape \(48,\) at 32x32 px, but the policy was trained on \(96,\) "
         r"for camera 'front' \(was policy.json edited\?\)", "run",
         setup=lambda c: _edit_json(c.ckpt / "policy.json", _swap_encoder)),
    Case("checkpoint", "`policy.json` of another program", lambda c: load(c.run),
         r"policy.json is not an s2policy checkpoint", "run",
         setup=lambda c: _edit_json(c.ckpt / "policy.json", lambda i: i.update(format="x"))),
    Case("checkpoint", "a checkpoint from a newer s2policy", lambda c: load(c.run),
         r"has checkpoint version 99; upgrade s2policy", "run",
         setup=lambda c: _edit_json(c.ckpt / "policy.json", lambda i: i.update(version=99))),
    Case("checkpoint", "`training_state.pt` that needs code to load",
         lambda c: training_state(c.run), r"not a plain tensor file that s2policy wrote",
         "run", setup=_pickle_state),
    # evaluation
    Case("evaluation", "a checkpoint of another task", lambda c: _eval(c, task="stack"),
         r"was trained on task 'cube_pick', not 'stack'", "run"),
    Case("evaluation", "an encoder override that differs",
         lambda c: _eval(c, encoder=EncoderConfig(backbone="vit_nano", scales=(32,))),
         r"encoder config does not match .*scales: checkpoint \[32, 64\] vs requested \[32\]",
         "run"),
    Case("evaluation", "encoder weights changed since training", _eval,
         r"live encoder differs .* in \['backbone'\]", "run",
         setup=lambda c: _edit_json(c.ckpt / "policy.json", lambda i: i["encoder"]["spec"]
                                    ["backbone"].update(weights_digest="0" * 64))),
    Case("evaluation", "`n_episodes=0`", lambda c: EvalConfig(checkpoint="x", n_episodes=0),
         r"n_episodes and n_envs must be >= 1"),
    Case("evaluation", "`n_records=-1`", lambda c: EvalConfig(checkpoint="x", n_records=-1),
         r"n_videos and n_records >= 0"),
    Case("tracking", "`logger.backend=mlflow`", lambda c: LoggerConfig(backend="mlflow"),
         r"unknown logger 'mlflow'; known: none, tensorboard, wandb"),
    Case("feature approximation", "no source encoder", lambda c: ApproxConfig(sources=[]),
         r"sources must name at least one encoder config"),
    Case("evaluation", "`num_inference_steps` for an MLP",
         lambda c: PolicyRunner(load(c.run), num_inference_steps=4),
         r"policy 'mlp' predicts in one pass and has no inference steps", "run"),
    Case("evaluation", "`n_action_steps` beyond the predicted horizon",
         lambda c: PolicyRunner(load(c.run), n_action_steps=8),
         r"n_action_steps must be in \[1, 7\]", "run"),
    # robomimic
    Case("robomimic", "a file that is not HDF5",
         lambda c: import_robomimic(_robomimic_file(c, b"plain text\n"), c.tmp / "o.zarr"),
         r"demos.hdf5 is not a readable HDF5 file"),
    Case("robomimic", "an HDF5 file without `data/`",
         lambda c: import_robomimic(_robomimic_file(c, mutate=lambda f: f.move("data", "x")),
                                    c.tmp / "o.zarr"),
         r"is not a robomimic dataset: it has no data/ group"),
    Case("robomimic", "an unknown `obs_keys` entry",
         lambda c: import_robomimic(_robomimic_file(c), c.tmp / "o.zarr", obs_keys=["rgb"]),
         r"unknown obs key\(s\) \['rgb'\]"),
    Case("robomimic", "a source file that does not exist",
         lambda c: import_robomimic(c.tmp / "none.hdf5", c.tmp / "o.zarr"),
         r"no robomimic file at"),
    # robot
    Case("robot", "a robot without the trained cameras and action size",
         lambda c: check_robot(ROBOT_SPEC, load(c.run)),
         r"the robot does not match the checkpoint: cameras \['wrist'\] missing.*action dim 4"),
    Case("robot", "`sync_wait_s` longer than a control period",
         lambda c: LoopConfig(hz=10, sync_wait_s=0.2), r"sync_wait_s must be in \[0, 1/hz\)"),
    Case("robot", "a workspace box with low above high",
         lambda c: SafetyConfig(workspace_low=(0.1, 0, 0), workspace_high=(0, 1, 1)),
         r"workspace_low/high must be \(x, y, z\) with low < high"),
]  # fmt: skip

MESSAGES: dict[int, str] = {}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """This file's own small store (the session's demo store gathers other tests' caches)."""
    path = tmp_path_factory.mktemp("bad_inputs_store") / "cube_pick.zarr"
    collect_demos(CollectConfig(task=TASK, n_episodes=6, output=str(path)))
    return path


@pytest.fixture(scope="module")
def trained(source, tmp_path_factory, run_config):
    run = tmp_path_factory.mktemp("bad_inputs_run")
    train(run_config(source, run, small_mlp(), steps=10))
    return run


def make_ctx(demo_store: Path, trained: Path, folder: Path, run_config) -> Ctx:
    folder.mkdir(parents=True, exist_ok=True)
    store, run = folder / "cube_pick.zarr", folder / "run"
    shutil.copytree(demo_store, store)
    shutil.copytree(trained, run)
    return Ctx(folder, store, run, run_config, demo_store)


@pytest.fixture
def ctx(source, trained, tmp_path, run_config):
    return make_ctx(source, trained, tmp_path, run_config)


@pytest.mark.parametrize("index", range(len(CASES)), ids=[c.what for c in CASES])
def test_bad_input_gets_one_sentence_and_loses_nothing(index, ctx):
    MESSAGES[index] = run_case(CASES[index], ctx)


def run_case(case: Case, ctx: Ctx) -> str:
    """Run one case; returns its sentence with the case's folder written ``<dir>``."""
    if case.setup is not None:
        case.setup(ctx)
    guarded = {"store": ctx.store, "run": ctx.run}.get(case.guard)
    before = digest(guarded) if guarded else None
    with pytest.raises(Exception) as err:  # noqa: PT011  (each case names its own error)
        case.run(ctx)
    msg = str(err.value).replace(str(ctx.tmp), "<dir>")
    msg = re.sub(r"\b[0-9a-f]{16,}\b", "<hash>", msg)  # fingerprints, digests
    msg = re.sub(r"/\S*/pytest-\d+/[^/\s']+", "<tmp>", msg)  # the shared fixtures' folders
    msg = re.sub(r"\b\d{4,}\b", "<n>", msg)  # compressed sizes, which depend on the frames
    assert re.search(case.error, msg), msg
    assert "\n" not in msg and "Traceback" not in msg, msg
    if guarded is not None:
        assert digest(guarded) == before, f"{case.guard} changed"
    return msg


def render(messages: dict[int, str]) -> str:
    lines = [
        "# Bad inputs and the one sentence each gets",
        "",
        "Generated by `S2POLICY_WRITE_DOCS=1 pytest tests/test_bad_inputs.py` from the messages "
        "the cases raise (`<dir>` stands for the case's folder, `<tmp>` for a shared test "
        "folder, `<hash>` for a fingerprint, `<n>` for a byte count). In every row the operation "
        "stops before changing anything: where the last column names the store or the run "
        "directory, the test checks that it is byte for byte unchanged.",
        "",
        "| area | bad input | the sentence | kept |",
        "| --- | --- | --- | --- |",
    ]
    kept = {"store": "the store, unchanged", "run": "the run directory, unchanged", None: "-"}
    for i, case in enumerate(CASES):
        msg = messages.get(i, "(not run)").replace("|", "\\|")
        lines.append(f"| {case.area} | {case.what} | {msg} | {kept[case.guard]} |")
    return "\n".join(lines) + "\n"


def test_the_documented_table_is_current(source, trained, tmp_path, run_config):
    for i in range(len(CASES)):  # the cases a -k selection left out
        if i not in MESSAGES:
            MESSAGES[i] = run_case(
                CASES[i], make_ctx(source, trained, tmp_path / str(i), run_config)
            )
    text = render(MESSAGES)
    if os.environ.get("S2POLICY_WRITE_DOCS"):
        DOC.write_text(text)
    assert DOC.is_file() and DOC.read_text() == text, (
        "docs/bad_inputs.md is out of date: S2POLICY_WRITE_DOCS=1 pytest tests/test_bad_inputs.py"
    )
    assert len(CASES) >= 30
