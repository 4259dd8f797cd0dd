"""One training loop for every policy, on cached features (CPU or GPU, bf16 autocast, DDP)."""

from __future__ import annotations

import copy
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.training_utils import EMAModel
from torch.nn.parallel import DistributedDataParallel

from envs import EnvConfig
from s2policy.data.normalizer import Normalizer
from s2policy.data.privileged import PRIVILEGED, oracle_features, oracle_keys
from s2policy.data.spec import DataSpec
from s2policy.encoders.s2 import ORACLE, build_encoder
from s2policy.features.cache import CacheInfo, build_cache, open_cache
from s2policy.policies import make_policy
from s2policy.policies.artifact import (
    BEST,
    LEGACY_POLICY,
    EncoderInfo,
    Provenance,
    TrainedPolicy,
    load,
    recover,
    save,
    training_state,
    whole_checkpoint,
)
from s2policy.runtime import autocast, init_distributed, resolve_device, resolve_dtype
from s2policy.task import TaskConfig
from s2policy.training.config import RunConfig, TrainConfig
from s2policy.training.dataset import CachedFeatureData, WindowSpec
from s2policy.training.select import Selector
from s2policy.training.trainer import Trainer

logger = logging.getLogger(__name__)


def dataset_task(cfg: RunConfig, attrs: dict[str, Any]) -> TaskConfig | None:
    """The task as the demonstrations were collected (image size, cameras, randomization, ...):
    evaluation must see what the data shows, whatever ``task.env`` the run config says. None for
    a store that records no simulated task (a robot's data, an import): the run is then defined
    by the dataset itself (its :class:`~s2policy.data.spec.DataSpec`), and ``task=`` is unused."""
    name = attrs.get("task")
    if name is None or "env" not in attrs:
        logger.info(
            "%s records no simulated task: a dataset-defined run (task=%s is not used)",
            cfg.dataset,
            cfg.task.name,
        )
        return None
    if name != cfg.task.name:
        raise ValueError(
            f"{cfg.dataset} holds demonstrations of task {name!r}, but the run is for task "
            f"{cfg.task.name!r}; pass task={name} or dataset=<a {cfg.task.name} store>"
        )
    return TaskConfig(name, EnvConfig(**attrs["env"]), cfg.task.max_episode_steps)


def resolve_cameras(cfg: RunConfig, task: TaskConfig | None, store_cameras: list[str]) -> list[str]:
    if not cfg.encoder.is_image:
        return []
    default = list(task.env.cameras) if task is not None else list(store_cameras)
    cameras = default if cfg.policy.cameras is None else list(cfg.policy.cameras)
    if not cameras:
        raise ValueError(
            f"policy.cameras=[] leaves encoder {cfg.encoder.backbone!r} no camera; a blind "
            "(state-only) policy is encoder=blind"
        )
    missing = [c for c in cameras if c not in store_cameras]
    if missing:
        raise ValueError(
            f"the policy needs camera(s) {missing}, but {cfg.dataset} has {store_cameras}; set "
            "policy.cameras to a subset, or encoder=blind for a state-only policy"
        )
    return cameras


@dataclass
class PreparedData:
    """What a run trains on, and what its checkpoint records about it."""

    data: CachedFeatureData
    #: The simulated task of the data (None: a dataset-defined run).
    task: TaskConfig | None
    #: What the data looks like (the cameras the policy sees, state, action, rate, tasks).
    spec: DataSpec
    #: The frozen encoder (``None`` when blind; the oracle's privileged keys for the oracle)
    #: and its feature cache.
    encoder: EncoderInfo | None
    cache: CacheInfo | None
    dataset_episodes: int
    #: ``(prefix tokens, rows, cols)`` of each camera's token map (``encoder.pool=tokens``).
    token_layouts: dict[str, list[int]] = field(default_factory=dict)

    @property
    def shape_meta(self) -> dict[str, Any]:
        meta = self.data.shape_meta
        if self.token_layouts:
            meta["token_layouts"] = self.token_layouts
        return meta

    def provenance(self, cfg: RunConfig) -> Provenance:
        return Provenance(
            str(cfg.dataset),
            self.dataset_episodes,
            self.cache.fingerprint if self.cache else None,
            cfg.to_dict(),
        )


def prepare_data(cfg: RunConfig, device: torch.device, cache_dtype: str) -> PreparedData:
    """Build the feature cache when missing (through the cache module) and load the windows."""
    from s2policy.data.formats.robomimic import check_import_complete
    from s2policy.data.store import ReplayBuffer

    store = ReplayBuffer.open(cfg.dataset)
    attrs = store.attrs
    check_import_complete(attrs, cfg.dataset)
    task = dataset_task(cfg, attrs)
    cameras = resolve_cameras(cfg, task, list(attrs.get("cameras", [])))
    if task is None and cfg.encoder.is_oracle:
        raise ValueError(
            f"encoder=oracle needs a simulated task's privileged object state, but {cfg.dataset} "
            "records no simulated task"
        )
    encoder_info, cache, extra, layouts = None, None, {}, {}
    if cfg.encoder.is_oracle:
        keys = oracle_keys(store.keys())
        if not keys:
            raise ValueError(
                f"{cfg.dataset} records no privileged object state (no *_pos arrays), which the "
                "oracle needs; collect the demonstrations with collect_demos.py"
            )
        extra = {PRIVILEGED: oracle_features({k: store[k][:] for k in keys}, keys)}
        encoder_info = EncoderInfo(cfg.encoder, {"backbone": ORACLE, "keys": keys}, "float32")
    if cameras:
        encoder = build_encoder(cfg.encoder).to(device)
        if cfg.train.build_cache:
            cache = build_cache(
                cfg.dataset,
                encoder,
                cameras,
                cfg.train.cache_batch_size,
                cfg.train.cache_chunk_steps,
                cache_dtype,
                augment=cfg.train.augment,
            )
        else:
            cache = open_cache(cfg.dataset, encoder, cameras, cache_dtype, cfg.train.augment)
        encoder_info = EncoderInfo(cfg.encoder, encoder.spec(), cache_dtype)
        if cfg.encoder.pool == "tokens":
            grid = encoder.token_grid(*store[cameras[0]].shape[1:3])
            layouts = {cam: [encoder.num_prefix_tokens, *grid] for cam in cameras}
        del encoder
    windows = WindowSpec(cfg.policy.n_obs_steps, cfg.policy.horizon, cfg.policy.n_action_steps)
    data = CachedFeatureData(
        cfg.dataset,
        cache,
        cameras,
        windows,
        cfg.train.val_ratio,
        cfg.train.seed,
        device,
        extra,
        cfg.train.n_demos,
    )
    spec = DataSpec.from_store(store, cameras)
    return PreparedData(data, task, spec, encoder_info, cache, store.n_episodes, layouts)


def fit_normalizer(data: CachedFeatureData, normalize_features: bool) -> Normalizer:
    norm = Normalizer()
    norm.fit("action", data.fit_data("action"), "limits")
    norm.fit("state", data.fit_data("state"), "gaussian")
    for cam in data.cameras:
        norm.fit(cam, data.fit_data(cam), "gaussian" if normalize_features else "identity")
    return norm


@dataclass
class TrainResult:
    """A finished run: its checkpoint and the feature cache it trained on (``None`` if blind)."""

    checkpoint: Path
    cache: CacheInfo | None


def train(cfg: RunConfig, on_log: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """Train ``cfg.policy`` and return the final checkpoint directory."""
    return fit(cfg, on_log).checkpoint


def fit(
    cfg: RunConfig,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    on_start: Callable[[], None] | None = None,
) -> TrainResult:
    """Train ``cfg.policy``; returns the final checkpoint and the cache it was trained on.
    ``on_start()`` runs once every refusal check passed (nothing in the run directory changes
    before it but the completion of an interrupted checkpoint swap)."""
    tcfg, (rank, world) = cfg.train, init_distributed()
    device = resolve_device(tcfg.device)
    dtype = resolve_dtype(tcfg.dtype, device)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(tcfg.seed + rank)
    ckpt = None
    if tcfg.resume:
        if rank == 0:  # finish a swap a crash interrupted, once, before the ranks look
            recover(out)
        if world > 1:
            torch.distributed.barrier()
        ckpt = recover(out)  # whole now (or None): no rank renames anything here
    elif rank == 0:
        refuse_overwrite(cfg, out)
    # the raw weights, which the run continues from (EMA weights are part of the state)
    resumed = load(ckpt, use_ema=False) if ckpt is not None else None
    if resumed is not None:  # before any cache is built for a config that cannot resume
        check_resume_config(cfg, resumed)
    prepared = prepare_data(cfg, device, dtype)
    if resumed is not None:
        check_resume_encoder(cfg, prepared, resumed)
    if prepared.task is None and tcfg.select == "rollout" and cfg.eval.task is None:
        raise ValueError(
            f"train.select=rollout needs a simulated task, but {cfg.dataset} records none (a "
            "dataset-defined run): use train.select=val_loss or last"
        )
    if on_start is not None:
        on_start()
    data = prepared.data
    policy = make_policy(
        cfg.policy, prepared.shape_meta, fit_normalizer(data, cfg.policy.normalize_features)
    )
    policy.to(device)
    ema = None
    if getattr(cfg.policy, "use_ema", False):
        ema = EMAModel(policy.parameters(), power=cfg.policy.ema_power, use_ema_warmup=True)
    generators = {
        "data_rng": torch.Generator().manual_seed(tcfg.seed * 7919 + rank),
        "noise_rng": torch.Generator(device).manual_seed(tcfg.seed * 104729 + rank),
        "torch_rng": torch.default_generator,  # dropout and the like draw from the global RNG
    }
    trainer = Trainer(
        policy,
        tcfg,
        out,
        device=device,
        dtype=dtype,
        samples_per_step=tcfg.batch_size * world,
        grad_clip=tcfg.grad_clip,
        ema=ema,
        generators=generators,
        rank=rank,
        loss_key="train_loss",
    )
    if resumed is not None:
        policy.load_state_dict(resumed.policy.state_dict())
        logger.info("resumed %s at step %d", out, trainer.resume(training_state(ckpt)))
    model = DistributedDataParallel(policy) if world > 1 else policy
    provenance = prepared.provenance(cfg)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1, default=str))

    def write(name: str = "checkpoint", state=None, selection=None) -> Path:
        task, encoder, ema = prepared.task, prepared.encoder, trainer.ema_weights()
        return save(
            out, policy, task, encoder, provenance, trainer.step, ema, state, name, selection,
            prepared.spec,
        )  # fmt: skip

    selector = None
    if tcfg.select != "last" and rank == 0:
        selector = make_selector(cfg, prepared, policy, trainer, provenance, device, write)
        if ckpt is not None:
            selector.resume(training_state(ckpt).get("select"))

    def checkpoint() -> Path | None:
        if rank != 0:
            return None
        state = trainer.state()
        state.setdefault("ema", None)  # a policy's training state always names its EMA
        if selector is not None:
            state["select"] = selector.state()
        return write(state=state)

    if tcfg.select == "val_loss" and not data.n_windows("val"):
        raise ValueError(
            f"train.select=val_loss needs validation windows, but train.val_ratio="
            f"{tcfg.val_ratio} leaves none of {cfg.dataset}'s episodes for validation; raise it "
            "or use train.select=rollout"
        )

    def validation() -> dict[str, float]:
        record = {}
        if data.n_windows("val"):
            record["val_loss"] = validate(policy, data, tcfg.batch_size, device, dtype)
        if selector is not None:
            record.update(selector(trainer.step, record))
        return record

    final = trainer.run(
        next_batch=lambda: data.sample(tcfg.batch_size, generators["data_rng"]),
        loss=lambda batch: model(batch, generator=generators["noise_rng"]),
        on_checkpoint=checkpoint,
        on_log=on_log,
        validate=validation if data.n_windows("val") or selector is not None else None,
        val_every=tcfg.val_every,
    )
    if world > 1:
        torch.distributed.barrier()
    if final is not None and selector is not None:
        best = whole_checkpoint(out, BEST)
        if best is None:  # only a crash between runs can leave none: evaluate the last
            logger.warning("%s has no whole %s/; evaluating %s", out, BEST, final)
        final = best or final
    return TrainResult(final or out / "checkpoint", prepared.cache)


def make_selector(cfg, prepared, policy, trainer, provenance, device, write) -> Selector:
    """``train.select``'s :class:`Selector`: rollouts of an in-memory copy of the current
    weights (the EMA ones when evaluation would use them) with the run's evaluation settings;
    training's module is untouched; the best is written by ``write``."""
    out = Path(cfg.output_dir)

    def candidate() -> TrainedPolicy:
        copied = copy.deepcopy(policy)
        ema = trainer.ema_weights() if cfg.eval.use_ema else None
        if ema is not None:
            copied.load_state_dict(ema)
        used = ema is not None
        return TrainedPolicy(
            copied.eval(), prepared.task, prepared.encoder, provenance, trainer.step,
            used, used, out / "checkpoint", prepared.spec,
        )  # fmt: skip

    return Selector(
        cfg.train.select,
        cfg.eval,
        cfg.train.select_episodes,
        cfg.train.select_seed,
        device,
        out / "select",
        candidate,
        lambda name, selection: write(name, selection=selection),
    )


#: Run-config fields that may change when a run resumes: the length of the run, where and how
#: often it logs and saves (and to which tracker), and what happens after it. Any other
#: difference is refused.
RESUMABLE = (
    "train.steps",
    "train.resume",
    "train.overwrite",
    "train.device",
    "train.log_every",
    "train.val_every",
    "train.ckpt_every",
    "train.build_cache",
    "train.cache_batch_size",
    "train.cache_chunk_steps",
    "eval.",
    "logger.",
    "output_dir",
    "run_name",
    "run_group",
)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def refuse_overwrite(cfg: RunConfig, out: Path) -> None:
    """A run directory that holds a checkpoint is continued (``train.resume=true``) or replaced
    on request (``train.overwrite=true``), never overwritten silently."""
    held = [p.name for p in out.glob("checkpoint*") if p.is_dir()]
    if held and not cfg.train.overwrite:
        raise FileExistsError(
            f"{out} already holds a trained run ({', '.join(sorted(held))}); continue it with "
            "train.resume=true, replace it with train.overwrite=true, or train into another "
            "run directory (run_tag=... or output_dir=...)"
        )
    if held:  # replaced on request: the weights the old run selected go with it
        for old in out.glob(f"{BEST}*"):
            shutil.rmtree(old)


def check_resume_config(cfg: RunConfig, trained: TrainedPolicy) -> None:
    """Refuse to resume a run whose checkpoint was trained with another config (one policy must
    not be trained on two encoders or two datasets), listing the fields that differ."""
    before = _flatten(json.loads(json.dumps(trained.provenance.config, default=str)))
    now = _flatten(json.loads(json.dumps(cfg.to_dict(), default=str)))
    # a training field added since the checkpoint was written is at its default then
    defaults = _flatten(json.loads(json.dumps({"train": asdict(TrainConfig())}, default=str)))
    for k, v in defaults.items():
        before.setdefault(k, v)
    if "policy.name" in before:  # policy fields added since: what such checkpoints used
        for k, v in LEGACY_POLICY.items():
            before.setdefault(f"policy.{k}", v)
    if all(len(shape) == 1 for shape in trained.shape_meta["features"].values()):
        for k in ("policy.spatial_head", "policy.keypoints"):  # no token map: no spatial head
            before.pop(k, None), now.pop(k, None)
    diff = [
        f"{k}: {before.get(k)!r} -> {now.get(k)!r}"
        for k in sorted(set(before) | set(now))
        if not k.startswith(RESUMABLE) and before.get(k) != now.get(k)
    ]
    if diff:
        _refuse_resume(cfg, "; ".join(diff))


def check_resume_encoder(cfg: RunConfig, prepared: PreparedData, trained: TrainedPolicy) -> None:
    """The same config can still name other weights (a weights file rewritten in place) or a
    store that has grown since (its episode split, and so the validation set, would change)."""
    spec_then = trained.encoder.spec if trained.encoder else None
    spec_now = prepared.encoder.spec if prepared.encoder else None
    if spec_then != spec_now:
        _refuse_resume(cfg, "the encoder's spec: its weights changed since the checkpoint")
    episodes = trained.provenance.dataset_episodes
    if episodes is not None and episodes != prepared.dataset_episodes:
        _refuse_resume(cfg, f"the dataset's episodes: {episodes} -> {prepared.dataset_episodes}")


def _refuse_resume(cfg: RunConfig, diff: str) -> None:
    raise ValueError(
        f"cannot resume {cfg.output_dir}: its checkpoint was trained with another config "
        f"({diff}); resume with the same settings, or train into a new run directory (another "
        "run_tag or output_dir)"
    )


@torch.no_grad()
def validate(
    policy, data: CachedFeatureData, batch_size: int, device: torch.device, dtype: str
) -> float:
    """Mean loss over every validation window, with a fixed noise seed (comparable over steps)."""
    policy.eval()
    gen = torch.Generator(data.device).manual_seed(12345)
    losses, counts = [], []
    for batch in data.iterate("val", batch_size):
        with autocast(device, dtype):
            losses.append(policy(batch, generator=gen).item())
        counts.append(len(batch["action"]))
    return float(np.average(losses, weights=counts))
