"""The closed loops of an evaluation's first episodes, kept for viewing (``EvalConfig.n_records``).

Each recorded episode becomes one episode of ``<eval>/records.zarr``, a ReplayBuffer store in
the demonstrations' layout (``datasets/README.md``), so whatever reads demonstrations reads it.
Per step ``t`` (``T`` steps, the observation before each action, as in the demonstrations):

- the observation the policy acted on: camera images, ``state``, the privileged object state;
- ``action`` ``(T, A)``: the executed action (ensembled when ``ensemble_decay`` is set);
- ``success`` ``(T,)``: the task's success flag after that action;
- ``predicted`` ``(T, K, A)``: the policy's newest prediction, the whole predicted future from
  the step it was predicted at (``K = horizon - n_obs_steps + 1``; the first ``n_action_steps``
  are the executable chunk), and ``predicted_step`` ``(T,)``: that step (``t`` itself where a
  chunk was predicted at ``t``). Absent when the runner reports no predictions.

Per episode: ``meta/episode_seeds``, ``meta/episode_success`` and ``meta/episode_index`` (the
episode's place in the seed list; episodes are stored in the order they finish). The root
attributes are the demonstrations' (task, env config, ``control_hz``, cameras, ...) plus
``source: evaluation`` and ``n_action_steps``. ``python -m s2policy.viz rollout=<eval folder>``
shows them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from s2policy.data.store import ReplayBuffer

#: The store's name in an evaluation's output folder.
RECORDS = "records.zarr"


class EpisodeRecord:
    """The steps of one episode, collected while it runs."""

    def __init__(self) -> None:
        self.steps: list[dict[str, np.ndarray]] = []
        self.predicted: np.ndarray | None = None
        self.predicted_step = -1

    def predict(self, future: np.ndarray) -> None:
        """A new prediction ``(K, A)`` at the current step (the next one :meth:`act` adds)."""
        self.predicted = np.asarray(future, np.float32)
        self.predicted_step = len(self.steps)

    def act(self, observation: dict[str, Any], action: np.ndarray) -> None:
        step = {k: np.asarray(v) for k, v in observation.items()}
        step["action"] = np.asarray(action, np.float32)
        if self.predicted is not None:
            step["predicted"] = self.predicted
            step["predicted_step"] = np.int64(self.predicted_step)
        self.steps.append(step)

    def outcome(self, success: bool) -> None:
        """The success flag after the latest action."""
        self.steps[-1]["success"] = np.bool_(success)

    def arrays(self) -> dict[str, np.ndarray]:
        """Per-step arrays ``(T, ...)``."""
        return {k: np.stack([s[k] for s in self.steps]) for k in self.steps[0]}


class Recorder:
    """Records the episodes of index ``< n_records`` played on ``n_envs`` environments into
    ``path`` (replaced if it exists). :class:`~s2policy.evaluation.rollout.Rollouts` calls
    :meth:`start` at each reset, :meth:`predicted` from the runner's ``on_predict``, :meth:`act`
    after each control step, :meth:`outcome` after each environment step and :meth:`finish` at
    the end of an episode."""

    def __init__(self, path: Path, attrs: dict[str, Any], n_records: int, n_envs: int):
        self.buffer = ReplayBuffer.create(
            path, attrs={**attrs, "source": "evaluation"}, overwrite=True
        )
        self.n_records = n_records
        self.episodes: list[EpisodeRecord | None] = [None] * n_envs

    def start(self, env: int, index: int) -> None:
        """Environment ``env`` starts episode ``index`` of the seed list (-1: none)."""
        self.episodes[env] = EpisodeRecord() if 0 <= index < self.n_records else None

    def predicted(self, envs: Sequence[int], futures: np.ndarray) -> None:
        """The runner predicted ``futures`` ``(n, K, A)`` for environments ``envs``."""
        for env, future in zip(envs, futures, strict=True):
            if self.episodes[env] is not None:
                self.episodes[env].predict(future)

    def act(
        self, observations: Sequence[dict[str, Any]], actions: np.ndarray, active: np.ndarray
    ) -> None:
        for env in np.flatnonzero(active):
            if self.episodes[env] is not None:
                self.episodes[env].act(observations[env], actions[env])

    def outcome(self, env: int, success: bool) -> None:
        if self.episodes[env] is not None:
            self.episodes[env].outcome(success)

    def finish(self, env: int, index: int, seed: int, success: bool) -> int | None:
        """Store environment ``env``'s finished episode; returns its episode number in the
        store (``None``: not recorded)."""
        record, self.episodes[env] = self.episodes[env], None
        if record is None or not record.steps:
            return None
        self.buffer.add_episode(
            record.arrays(),
            meta={
                "episode_seeds": np.int64(seed),
                "episode_success": np.bool_(success),
                "episode_index": np.int64(index),
            },
        )
        return self.buffer.n_episodes - 1
