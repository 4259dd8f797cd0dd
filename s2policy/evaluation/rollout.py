"""Seeded closed-loop evaluation of a checkpoint in its task, with the live S² encoder.

Environments run in a gymnasium ``SyncVectorEnv`` (autoreset disabled); each slot plays
episodes from the seed list in turn. A :class:`~s2policy.policies.runner.PolicyRunner` drives
them: it keeps each slot's observation history and action queue, and when slots need a chunk,
their frames go through the live encoder in one batch (the cache's exact preprocessing and
float16 rounding) and the policy predicts their chunks in one call. Diffusion noise is drawn per
episode from a generator seeded by the episode's seed. An evaluation is reproducible from its
seed list and ``n_envs``: with another ``n_envs`` the batches differ, and batch-size-dependent
float rounding in the encoder can flip closed-loop outcomes of brittle policies. The first
``n_videos`` episodes are saved as mp4, the first ``n_records`` as closed loops in
``records.zarr`` (:mod:`s2policy.evaluation.records`, for ``python -m s2policy.viz``).
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from s2policy.data.collect import store_attrs
from s2policy.encoders.s2 import BLIND
from s2policy.evaluation.config import EvalConfig
from s2policy.evaluation.records import RECORDS, Recorder
from s2policy.evaluation.stats import success_rate
from s2policy.evaluation.video import write_episode_video
from s2policy.policies.artifact import BEST, TrainedPolicy, load
from s2policy.policies.runner import PolicyRunner
from s2policy.runtime import resolve_device
from s2policy.task import TaskConfig
from s2policy.tracking import Tracker, open_tracker

logger = logging.getLogger(__name__)

__all__ = ["EvalConfig", "check_checkpoint", "evaluate"]


def rollout_task(cfg: EvalConfig, trained: TrainedPolicy) -> TaskConfig:
    """The simulated task to roll ``trained`` out in: its own, or for a dataset-defined
    checkpoint (a robot's data) the config's ``task``, if the checkpoint's spec fits it."""
    if trained.task is not None:
        return trained.task
    if cfg.task is None:
        raise ValueError(
            f"checkpoint {cfg.checkpoint} was trained on a dataset of its own "
            f"({trained.spec.describe()}), not on a simulated task: evaluate it offline on "
            "held-out episodes (python -m s2policy.evaluation.offline checkpoint=...) or on its "
            "robot, or name a task=... whose environment fits it"
        )
    problems = trained.spec.mismatches(cfg.task.spec())
    if problems:
        raise ValueError(
            f"checkpoint {cfg.checkpoint} (a dataset-defined run: {trained.spec.describe()}) "
            f"does not fit task {cfg.task.name!r}, whose environment differs: "
            f"{'; '.join(problems)}; evaluate it offline (python -m s2policy.evaluation.offline "
            "checkpoint=...) or on its robot"
        )
    return cfg.task


def check_checkpoint(cfg: EvalConfig, trained: TrainedPolicy) -> None:
    """Refuse a checkpoint of another task or encoder than the ones the config expects."""
    trained_on = rollout_task(cfg, trained).name
    if cfg.task is not None and cfg.task.name != trained_on:
        raise ValueError(
            f"checkpoint {cfg.checkpoint} was trained on task {trained_on!r}, not "
            f"{cfg.task.name!r}; "
            "evaluate it on its own task or pick a checkpoint of this one"
        )
    if cfg.encoder is None:
        return
    if cfg.encoder.is_blind and trained.is_blind:
        return
    have = trained.encoder.config.to_dict() if trained.encoder else {"backbone": BLIND}
    wanted = cfg.encoder.to_dict()
    diff = {k: (have.get(k), v) for k, v in wanted.items() if have.get(k) != v}
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
    """One environment's current episode (``index`` -1: idle, no seed left)."""

    index: int = -1
    seed: int = 0
    steps: int = 0
    success: bool = False
    start: float = 0.0
    frames: list = field(default_factory=list)


class Rollouts:
    """Plays a seed list on ``runner.n_envs`` vectorized environments; see the module docstring."""

    def __init__(
        self,
        cfg: EvalConfig,
        task: TaskConfig,
        runner: PolicyRunner,
        out: Path,
        on_episode: Callable[[dict[str, Any]], None] | None = None,
    ):
        self.cfg, self.task, self.runner = cfg, task, runner
        self.out, self.on_episode = out, on_episode
        self.n_envs = runner.n_envs
        self.video_cam = task.env.cameras[0] if task.env.cameras else None
        self.slots = [Slot() for _ in range(self.n_envs)]
        self.queue: deque = deque()
        self.episodes: list[dict[str, Any]] = []
        #: Each environment's latest privileged state (``info`` minus ``success``): object poses,
        #: goal. Given to the runner beside the observation, for policies and experts that use it.
        self.privileged: list[dict[str, np.ndarray]] = [{} for _ in range(self.n_envs)]
        #: The closed loops of the first ``cfg.n_records`` episodes (``records.zarr``).
        self.recorder: Recorder | None = None

    def run(self, seeds: list[int]) -> list[dict[str, Any]]:
        """Per-episode records (seed, success, steps, wall time, video, record), in seed-list
        order."""
        self.queue = deque(enumerate(seeds))
        self.episodes = [None] * len(seeds)  # type: ignore[list-item]
        if self.cfg.n_records:
            attrs = {**store_attrs(self.task), "n_action_steps": self.runner.n_action_steps}
            self.recorder = Recorder(self.out / RECORDS, attrs, self.cfg.n_records, self.n_envs)
            self.runner.on_predict = self.recorder.predicted
        venv = gym.vector.SyncVectorEnv(
            [lambda: self.task.make_env(self.cfg.max_episode_steps)] * self.n_envs,
            autoreset_mode=gym.vector.AutoresetMode.DISABLED,
        )
        try:
            obs = self._start(venv, np.ones(self.n_envs, dtype=bool))
            while self._active().any():
                observations = self._observations(obs)
                actions = self.runner.act(observations, self._active())
                if self.recorder is not None:
                    self.recorder.act(observations, actions, self._active())
                obs, _, terminated, truncated, infos = venv.step(actions)
                self._keep_privileged(infos, np.ones(self.n_envs, dtype=bool))
                finished = np.logical_or(terminated, truncated)  # idle slots too: must reset
                for i in np.flatnonzero(self._active()):
                    self._record_step(i, obs, bool(infos["success"][i]), finished[i])
                if finished.any() and self._active().any():
                    obs = self._start(venv, finished)
        finally:
            venv.close()
            self.runner.on_predict = None
            if self.recorder is not None:
                self.recorder.buffer.close()  # the records store's writer lock
        return self.episodes

    def _observations(self, obs: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        return [
            {**{k: v[i] for k, v in obs.items()}, **self.privileged[i]} for i in range(self.n_envs)
        ]

    def _keep_privileged(self, infos: dict[str, Any], mask: np.ndarray) -> None:
        for i in np.flatnonzero(mask):
            self.privileged[i] = {
                k: np.asarray(v[i])
                for k, v in infos.items()
                if not k.startswith("_") and k != "success" and infos.get(f"_{k}", mask)[i]
            }

    def _active(self) -> np.ndarray:
        return np.array([s.index >= 0 for s in self.slots])

    def _start(self, venv, mask: np.ndarray) -> dict[str, np.ndarray]:
        """Reset the masked slots with the next seeds (idle when none is left)."""
        for i in np.flatnonzero(mask):
            if self.queue:
                index, seed = self.queue.popleft()
                self.slots[i] = Slot(index, seed, start=time.perf_counter())
            else:
                self.slots[i] = Slot(seed=self.slots[i].seed)
        seeds = [s.seed for s in self.slots]
        new_obs, infos = venv.reset(
            seed=[int(x) if m else None for x, m in zip(seeds, mask, strict=True)],
            options={"reset_mask": mask},
        )
        self._keep_privileged(infos, mask)
        self.runner.reset(seeds, mask)
        for i in np.flatnonzero(mask):
            slot = self.slots[i]
            if 0 <= slot.index < self.cfg.n_videos and self.video_cam:
                slot.frames.append(new_obs[self.video_cam][i])
            if self.recorder is not None:
                self.recorder.start(i, slot.index)
        return new_obs

    def _record_step(self, i: int, obs: dict, success: bool, finished: bool) -> None:
        s = self.slots[i]
        s.steps += 1
        s.success = s.success or success
        if s.frames:
            s.frames.append(obs[self.video_cam][i])
        if self.recorder is not None:
            self.recorder.outcome(i, success)
        if not finished:
            return
        record = {
            "seed": s.seed,
            "success": s.success,
            "steps": s.steps,
            "wall_s": round(time.perf_counter() - s.start, 4),
        }
        if s.frames:
            path = self.out / f"episode_{s.index:03d}_seed{s.seed}.mp4"
            write_episode_video(path, s.frames, s.success, s.seed, self.task.env.control_hz)
            record["video"] = path.name
        if self.recorder is not None:
            stored = self.recorder.finish(i, s.index, s.seed, s.success)
            if stored is not None:  # the episode's number in records.zarr
                record["record"] = stored
        self.episodes[s.index] = record
        if self.on_episode is not None:
            self.on_episode(record)


def evaluate(
    cfg: EvalConfig,
    on_episode: Callable[[dict[str, Any]], None] | None = None,
    trained: TrainedPolicy | None = None,
    extra: dict[str, Any] | None = None,
    tracker: Tracker | None = None,
) -> dict[str, Any]:
    """Run ``cfg``'s episodes and write ``results.json`` (+ videos); returns the results.
    ``trained``: the already loaded checkpoint (else ``cfg.checkpoint`` is loaded); ``extra``:
    more entries for the results (e.g. the sweep's linear-probe scores); ``tracker``: where the
    success rate and videos are logged (a sweep job's run), else one opened from ``cfg.logger``
    in the checkpoint's run directory."""
    device = resolve_device(cfg.device)
    if trained is None:
        if cfg.checkpoint is None:
            raise ValueError("no checkpoint to evaluate: pass checkpoint=<run dir>")
        trained = load(cfg.checkpoint, cfg.use_ema, device)
    check_checkpoint(cfg, trained)
    out = Path(cfg.output_dir) if cfg.output_dir else trained.run_dir / "eval"
    with ExitStack() as stack:
        if tracker is None:
            tracker = stack.enter_context(eval_tracker(cfg, trained))
        out.mkdir(parents=True, exist_ok=True)
        task, runner, episodes = play(cfg, trained, device, out, on_episode)
        results = write_results(out, cfg, task, trained, runner, episodes, extra)
        tracker.log_evaluation(results, trained.step)
    return results


def play(
    cfg: EvalConfig,
    trained: TrainedPolicy,
    device,
    out: Path,
    on_episode: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[TaskConfig, PolicyRunner, list[dict[str, Any]]]:
    """Play ``cfg``'s seed list with ``trained`` (its task, ``cfg``'s randomization and
    execution); videos and records go to ``out``. Returns the task, the runner and the
    per-episode records. Nothing else is written (training's rollout selection uses it)."""
    task = TaskConfig(**rollout_task(cfg, trained).to_dict())
    if cfg.randomization is not None:
        task.env.randomization = cfg.randomization
    seeds = cfg.seed_list()
    runner = PolicyRunner(
        trained,
        min(cfg.n_envs, len(seeds)),
        device,
        cfg.num_inference_steps,
        cfg.n_action_steps,
        cfg.ensemble_decay,
        cfg.infer_when_remaining,
    )
    return task, runner, Rollouts(cfg, task, runner, out, on_episode).run(seeds)


def eval_tracker(cfg: EvalConfig, trained: TrainedPolicy) -> Tracker:
    """``cfg.logger``'s tracker for a standalone evaluation: the run's ``tensorboard/`` (beside
    its training curves) or a W&B ``eval`` run named after the run directory."""
    config = {"checkpoint": str(trained.path), "step": trained.step, "eval": asdict(cfg)}
    run = trained.run_dir
    name = rollout_task(cfg, trained).name
    return open_tracker(cfg.logger, run, run.name, name, "eval", config, purge=False)


def encoder_summary(trained: TrainedPolicy, runner: PolicyRunner, task: TaskConfig) -> dict:
    """Backbone, scales, weights, parameters and GFLOPs per image of the policy's encoder."""
    if runner.live is None:  # blind, or the oracle
        return {
            "backbone": trained.encoder.config.backbone if trained.encoder else BLIND,
            "scales": [],
            "weights": None,
            "params": 0,
            "gflops_per_image": 0.0,
        }
    cfg = trained.encoder.config
    height, width = task.env.image_size
    return {
        "backbone": cfg.backbone,
        "scales": list(cfg.scales),
        "weights": cfg.weights,
        "pool": cfg.pool,
        "params": int(runner.live.encoder.backbone_cfg["params"]),
        "gflops_per_image": runner.live.encoder.gflops_per_image(height, width),
    }


def write_results(
    out: Path,
    cfg: EvalConfig,
    task: TaskConfig,
    trained: TrainedPolicy,
    runner: PolicyRunner,
    episodes: list[dict[str, Any]],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    wins = sum(e["success"] for e in episodes)
    rate = success_rate(wins, len(episodes))
    results = {
        "checkpoint": str(trained.path),
        "task": task.name,
        "policy": trained.policy.name,
        "train_seed": trained.provenance.train_seed,
        "dataset": trained.provenance.dataset,
        "demos": trained.provenance.demos,
        "encoder": encoder_summary(trained, runner, task),
        # Augmented views per frame in the feature cache it was trained on (0: none).
        "augment_views": int(
            trained.provenance.config.get("train", {}).get("augment", {}).get("views", 0)
        ),
        # How token maps were reduced (``policy.spatial_head``) and which weights were chosen
        # (``train.select``: ``last`` or the best by ``val_loss``/``rollout``).
        "spatial_head": getattr(trained.policy.cfg, "spatial_head", "attention"),
        # Steps of each predicted chunk (``policy.horizon``): what the policy was trained on.
        "horizon": trained.policy.cfg.horizon,
        "select": (
            trained.provenance.config.get("train", {}).get("select", "last")
            if trained.path.name == BEST  # the run's last weights were not selected
            else "last"
        ),
        "eval": {
            "seeds": [e["seed"] for e in episodes],
            "n_envs": cfg.n_envs,
            "max_episode_steps": cfg.max_episode_steps
            if cfg.max_episode_steps is not None
            else task.max_episode_steps,
            "use_ema": trained.used_ema,
            **runner.describe(),
            "randomization": task.env.randomization.to_dict(),
        },
        # Label of the evaluation's domain randomization; `trained_randomization` is the one of
        # the demonstrations (they differ when evaluating on held-out settings).
        "randomization": task.env.randomization.name,
        "trained_randomization": (trained.task or task).env.randomization.name,
        "episodes": episodes,
        "n_episodes": len(episodes),
        "successes": wins,
        "success_rate": rate.rate,
        "ci95": [rate.low, rate.high],
        "latency": runner.latency_summary(),
        **(extra or {}),
    }
    results["results_file"] = str(out / "results.json")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    logger.info("%s: success %s -> %s", trained.path, rate, out / "results.json")
    return results
