"""Seeded closed-loop evaluation of a checkpoint in its task, with the live S² encoder.

Environments run in a gymnasium ``SyncVectorEnv`` (autoreset disabled); each slot plays
episodes from the seed list in turn. When a slot has no queued action, the frames of its last
``n_obs_steps`` observations go through the live encoder (all slots and cameras in one batch,
the cache's exact preprocessing and float16 rounding) and the policy predicts a chunk, whose
``n_action_steps`` executable actions are queued. Diffusion noise is drawn per episode from a
generator seeded by the episode's seed. An evaluation is reproducible from its seed list and
``n_envs``: with another ``n_envs`` the batches differ, and batch-size-dependent float rounding
in the encoder can flip closed-loop outcomes of brittle policies.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from envs.randomization import Randomization, as_randomization
from s2policy.encoders.s2 import EncoderConfig
from s2policy.evaluation.stats import success_rate
from s2policy.evaluation.video import write_episode_video
from s2policy.inference import LiveEncoder, infer
from s2policy.runtime import resolve_device
from s2policy.task import TaskConfig
from s2policy.training.checkpoint import LoadedPolicy, load_policy

logger = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    """``configs/eval.yaml``: which checkpoint, which episodes, how."""

    #: A run directory or its ``checkpoint/``.
    checkpoint: str = "???"
    n_episodes: int = 20
    #: Episode ``i`` uses seed ``seed + i``; the default lies far from collection seeds (0, 1, ...).
    seed: int = 100_000
    #: Explicit seed list (overrides ``n_episodes``/``seed``).
    seeds: list[int] | None = None
    #: Environments stepped together (one batched encoder/policy call for all of them).
    n_envs: int = 4
    #: Episode step limit; null: the task's.
    max_episode_steps: int | None = None
    #: Episodes (the first ones of the seed list) saved as mp4 with a success overlay.
    n_videos: int = 2
    device: str = "auto"
    #: DDIM steps of a diffusion policy; null: the checkpoint's.
    num_inference_steps: int | None = None
    use_ema: bool = True
    #: Expected task; the checkpoint must have been trained on it (null: the checkpoint's task).
    task: str | None = None
    #: Expected encoder; must match the checkpoint's (null: the checkpoint's encoder).
    encoder: EncoderConfig | None = None
    #: Where results.json and videos go; null: ``<run>/eval``.
    output_dir: str | None = None
    #: Domain randomization of the evaluation (``randomization=heldout``); null: the one the
    #: demonstrations were collected with. Results and reports carry its ``name``.
    randomization: Randomization | None = None

    def __post_init__(self):
        self.randomization = as_randomization(self.randomization)
        if self.n_episodes < 1 or self.n_envs < 1 or self.n_videos < 0:
            raise ValueError("n_episodes and n_envs must be >= 1, n_videos >= 0")
        if self.seeds is not None and not self.seeds:
            raise ValueError("seeds must not be an empty list")

    def seed_list(self) -> list[int]:
        return list(self.seeds) if self.seeds else [self.seed + i for i in range(self.n_episodes)]


def check_checkpoint(cfg: EvalConfig, info: dict[str, Any]) -> None:
    """Refuse a checkpoint of another task or encoder than the ones the config expects."""
    trained_on = info["task"]["name"]
    if cfg.task is not None and cfg.task != trained_on:
        raise ValueError(
            f"checkpoint {cfg.checkpoint} was trained on task {trained_on!r}, not {cfg.task!r}; "
            "evaluate it on its own task or pick a checkpoint of this one"
        )
    if cfg.encoder is None:
        return
    trained = (info["encoder"] or {}).get("config") or {"backbone": "none"}
    if cfg.encoder.is_blind and trained["backbone"] == "none":
        return
    wanted = cfg.encoder.to_dict()
    diff = {k: (trained.get(k), v) for k, v in wanted.items() if trained.get(k) != v}
    if diff:
        details = ", ".join(
            f"{k}: checkpoint {a!r} vs requested {b!r}" for k, (a, b) in diff.items()
        )
        raise ValueError(
            f"encoder config does not match checkpoint {cfg.checkpoint} ({details}); drop the "
            "encoder override or evaluate a checkpoint trained with that encoder"
        )


@dataclass
class Slot:
    """One environment's current episode."""

    index: int = -1  # position in the seed list; -1 = idle
    seed: int = 0
    steps: int = 0
    success: bool = False
    start: float = 0.0
    history: deque = field(default_factory=deque)
    actions: deque = field(default_factory=deque)
    frames: list = field(default_factory=list)
    generator: torch.Generator | None = None


def evaluate(
    cfg: EvalConfig, on_episode: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Run ``cfg``'s episodes and write ``results.json`` (+ videos); returns the results."""
    device = resolve_device(cfg.device)
    loaded: LoadedPolicy = load_policy(cfg.checkpoint, cfg.use_ema, device)
    info, policy = loaded.info, loaded.policy
    check_checkpoint(cfg, info)
    task = TaskConfig(**info["task"])
    if cfg.randomization is not None:
        task.env.randomization = cfg.randomization
    cameras = list(info["shape_meta"]["features"])
    live = LiveEncoder.from_checkpoint(info, device) if cameras else None
    seeds = cfg.seed_list()
    n_envs = min(cfg.n_envs, len(seeds))
    out = Path(cfg.output_dir) if cfg.output_dir else loaded.path.parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    video_cam = task.env.cameras[0] if task.env.cameras else None
    venv = gym.vector.SyncVectorEnv(
        [lambda: task.make_env(cfg.max_episode_steps)] * n_envs,
        autoreset_mode=gym.vector.AutoresetMode.DISABLED,
    )
    n_obs = policy.cfg.n_obs_steps
    predict_kw = {}
    if cfg.num_inference_steps is not None and policy.name == "diffusion":
        predict_kw["num_inference_steps"] = cfg.num_inference_steps
    slots = [Slot() for _ in range(n_envs)]
    queue = deque(enumerate(seeds))
    episodes: list[dict[str, Any]] = [None] * len(seeds)  # type: ignore[list-item]
    latency = {"encoder_ms": [], "policy_ms": []}

    def start(mask: np.ndarray) -> dict[str, np.ndarray]:
        """Reset the masked slots with the next seeds (idle when none is left)."""
        reset_seeds = [None] * n_envs
        for i in np.flatnonzero(mask):
            if queue:
                index, seed = queue.popleft()
                slots[i] = Slot(
                    index,
                    seed,
                    start=time.perf_counter(),
                    generator=torch.Generator(device).manual_seed(seed),
                )
            else:
                slots[i] = Slot(seed=slots[i].seed)
            reset_seeds[i] = slots[i].seed
        new_obs, _ = venv.reset(seed=reset_seeds, options={"reset_mask": mask})
        for i in np.flatnonzero(mask):
            first = {k: v[i] for k, v in new_obs.items()}
            slots[i].history = deque([first] * n_obs, maxlen=n_obs)  # pad by repetition
            if slots[i].index >= 0 and slots[i].index < cfg.n_videos and video_cam:
                slots[i].frames.append(first[video_cam])
        return new_obs

    obs = start(np.ones(n_envs, dtype=bool))
    try:
        while any(s.index >= 0 for s in slots):
            need = [i for i, s in enumerate(slots) if s.index >= 0 and not s.actions]
            if need:
                chunks = infer(
                    policy,
                    live,
                    [slots[i].history for i in need],
                    [slots[i].generator for i in need],
                    device,
                    latency,
                    predict_kw,
                )
                for i, chunk in zip(need, chunks, strict=True):
                    slots[i].actions.extend(chunk)
            actions = np.zeros((n_envs, *venv.single_action_space.shape), dtype=np.float32)
            for i, s in enumerate(slots):
                if s.index >= 0:
                    actions[i] = s.actions.popleft()
            obs, _, terminated, truncated, infos = venv.step(actions)
            finished = np.zeros(n_envs, dtype=bool)
            for i, s in enumerate(slots):
                finished[i] = bool(terminated[i] or truncated[i])  # idle slots too: must reset
                if s.index < 0:
                    continue
                s.steps += 1
                s.success = s.success or bool(infos["success"][i])
                s.history.append({k: v[i] for k, v in obs.items()})
                if s.frames:
                    s.frames.append(obs[video_cam][i])
                if finished[i]:
                    record = {
                        "seed": s.seed,
                        "success": s.success,
                        "steps": s.steps,
                        "wall_s": round(time.perf_counter() - s.start, 4),
                    }
                    if s.frames:
                        path = out / f"episode_{s.index:03d}_seed{s.seed}.mp4"
                        write_episode_video(path, s.frames, s.success, s.seed, task.env.control_hz)
                        record["video"] = path.name
                    episodes[s.index] = record
                    if on_episode is not None:
                        on_episode(record)
            if finished.any() and any(s.index >= 0 for s in slots):
                obs = start(finished)
    finally:
        venv.close()
    return write_results(out, cfg, task, info, live, episodes, latency, loaded)


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    v = np.asarray(values)
    return {
        "mean": float(v.mean()),
        "p50": float(np.percentile(v, 50)),
        "p95": float(np.percentile(v, 95)),
        "calls": len(v),
    }


def write_results(out, cfg, task, info, live, episodes, latency, loaded) -> dict[str, Any]:
    wins = sum(e["success"] for e in episodes)
    rate = success_rate(wins, len(episodes))
    enc_cfg = (info["encoder"] or {}).get("config") or {"backbone": "none", "scales": []}
    encoder_summary = {
        "backbone": enc_cfg["backbone"],
        "scales": list(enc_cfg.get("scales", [])),
        "weights": enc_cfg.get("weights"),
        "params": 0,
        "gflops_per_image": 0.0,
    }
    if live is not None:
        height, width = task.env.image_size
        encoder_summary.update(
            params=int(live.encoder.backbone_cfg["params"]),
            gflops_per_image=live.encoder.gflops_per_image(height, width),
        )
    results = {
        "checkpoint": str(loaded.path),
        "task": info["task"]["name"],
        "policy": info["policy"]["name"],
        "train_seed": info["config"]["train"]["seed"],
        "dataset": info.get("dataset"),
        "demos": info.get("dataset_episodes"),
        "encoder": encoder_summary,
        "eval": {
            "seeds": [e["seed"] for e in episodes],
            "n_envs": cfg.n_envs,
            "max_episode_steps": cfg.max_episode_steps or info["task"]["max_episode_steps"],
            "use_ema": cfg.use_ema,
            "num_inference_steps": cfg.num_inference_steps,
            "randomization": task.env.randomization.to_dict(),
        },
        # Label of the evaluation's domain randomization; `trained_randomization` is the one of
        # the demonstrations (they differ when evaluating on held-out settings).
        "randomization": task.env.randomization.name,
        "trained_randomization": info["task"]["env"].get("randomization", {}).get("name", "off"),
        "episodes": episodes,
        "n_episodes": len(episodes),
        "successes": wins,
        "success_rate": rate.rate,
        "ci95": [rate.low, rate.high],
        "latency": {k: _summary(v) for k, v in latency.items()},
    }
    results["results_file"] = str(out / "results.json")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    logger.info("%s: success %s -> %s", loaded.path, rate, out / "results.json")
    return results
