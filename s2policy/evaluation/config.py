"""The one evaluation config: ``eval_rollouts.py`` (``configs/eval.yaml``) and the evaluation
right after training in a sweep (``eval.*`` of ``configs/config.yaml``) both use it."""

from __future__ import annotations

from dataclasses import dataclass, field

from envs.randomization import Randomization, as_randomization
from s2policy.encoders.s2 import EncoderConfig
from s2policy.policies.runner import check_ensemble_decay
from s2policy.task import TaskConfig
from s2policy.tracking import LoggerConfig


@dataclass
class EvalConfig:
    """Which checkpoint, which episodes, and how its chunks are executed."""

    #: Evaluate right after training (a sweep job); ``eval_rollouts.py`` ignores it.
    enabled: bool = False
    #: A run directory or its ``checkpoint/`` (a sweep job fills in its own).
    checkpoint: str | None = None
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
    #: Episodes (the first ones of the seed list) whose closed loop is kept in
    #: ``records.zarr`` beside ``results.json`` (observations, actions, each predicted chunk;
    #: ``s2policy.evaluation.records``) for ``python -m s2policy.viz rollout=<eval folder>``.
    n_records: int = 0
    device: str = "auto"
    use_ema: bool = True
    #: DDIM steps of a diffusion policy; null: the checkpoint's (an error for one-pass policies).
    num_inference_steps: int | None = None
    #: Actions executed per predicted chunk; null: the policy's ``n_action_steps``.
    n_action_steps: int | None = None
    #: ACT temporal ensembling of overlapping chunks (weights ``exp(-decay * i)``, oldest
    #: first); null: the newest chunk wins.
    ensemble_decay: float | None = None
    #: Predict a new chunk when the newest has at most this many actions left (0: when used up).
    infer_when_remaining: int = 0
    #: Expected task (``task=<name>``); the checkpoint must have been trained on a task of that
    #: name (null: the checkpoint's task). Only the name is compared.
    task: TaskConfig | None = None
    #: Expected encoder; must match the checkpoint's (null: the checkpoint's encoder).
    encoder: EncoderConfig | None = None
    #: Where results.json and videos go; null: ``<run>/eval``.
    output_dir: str | None = None
    #: Domain randomization of the evaluation (``randomization=heldout``); null: the one the
    #: demonstrations were collected with. Results and reports carry its ``name``.
    randomization: Randomization | None = None
    #: Experiment tracking of ``eval_rollouts.py`` (``logger=tensorboard|wandb``): success rate,
    #: interval and videos at the checkpoint's step, into the run's ``tensorboard/`` or a W&B
    #: run. A sweep job logs its evaluation with the run's own ``logger`` instead.
    logger: LoggerConfig = field(default_factory=LoggerConfig)

    def __post_init__(self):
        self.randomization = as_randomization(self.randomization)
        if isinstance(self.task, str):
            self.task = TaskConfig(name=self.task)
        if self.n_episodes < 1 or self.n_envs < 1 or self.n_videos < 0 or self.n_records < 0:
            raise ValueError(
                "eval: n_episodes and n_envs must be >= 1, n_videos and n_records >= 0"
            )
        if self.seeds is not None and not self.seeds:
            raise ValueError("eval: seeds must not be an empty list")
        if self.seeds is not None:
            repeated = sorted({s for s in self.seeds if list(self.seeds).count(s) > 1})
            if repeated:
                raise ValueError(
                    f"eval: seeds lists {repeated} more than once; each seed is one episode, and "
                    "a repeated one would count the same rollout twice in the rate and its interval"
                )
        if self.max_episode_steps is not None and self.max_episode_steps < 1:
            raise ValueError(
                f"eval: max_episode_steps must be >= 1 (null: the task's limit), got "
                f"{self.max_episode_steps}"
            )
        if self.infer_when_remaining < 0:
            raise ValueError("eval: infer_when_remaining must be >= 0")
        check_ensemble_decay(self.ensemble_decay, "eval: ensemble_decay")

    def seed_list(self) -> list[int]:
        return list(self.seeds) if self.seeds else [self.seed + i for i in range(self.n_episodes)]
