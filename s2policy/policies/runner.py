"""Running a trained policy on live observations, for a batch of environments.

:class:`PolicyRunner` (LeRobot's ``reset()`` / ``select_action()`` are the anchor) owns what
evaluation and the robot loop share: the live encoder (the checkpoint's encoder rebuilt, checked
against the spec it was trained with, applied with exactly the feature cache's preprocessing and
float16 rounding), each environment's observation history (``n_obs_steps``, padded by repeating
the first observation of an episode), its action queue (chunks of ``n_action_steps`` actions,
ACT temporal ensembling optional), the per-episode noise generators (seeded by the episode's
seed), and the latency record of the batched encoder and policy calls.

``act(observations)`` is the synchronous step used by evaluation. The robot loop uses the parts:
``observe``, ``predict`` (in its background worker) and ``queues[i]`` at its own tick (latency
compensation stays in the loop).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from s2policy.data.privileged import PRIVILEGED, oracle_features
from s2policy.encoders.s2 import S2Encoder, build_encoder
from s2policy.features.cache import encode_frames, stored
from s2policy.policies.artifact import EncoderInfo, TrainedPolicy

Observation = dict[str, np.ndarray]


def check_ensemble_decay(value: float | None, name: str = "ensemble_decay") -> None:
    """Temporal ensembling's decay: a finite number >= 0, or None (the newest chunk wins)."""
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0 or null, got {value}")


class LiveEncoder:
    """A frozen encoder applied to live frames exactly as the feature cache applies it."""

    def __init__(self, encoder: S2Encoder, dtype: str = "float32"):
        self.encoder, self.dtype = encoder, dtype
        self.device = next(encoder.parameters()).device

    @classmethod
    def from_info(cls, info: EncoderInfo, device: torch.device) -> LiveEncoder:
        """The trained-on encoder, rebuilt and checked against the spec it was trained with."""
        encoder = build_encoder(info.config).to(device)
        spec = encoder.spec()
        if spec != info.spec:
            keys = sorted(k for k in spec if spec[k] != info.spec.get(k))
            raise ValueError(
                f"the live encoder differs from the one this policy was trained on in {keys} "
                "(did the weights file change?); retrain or restore the weights"
            )
        return cls(encoder, info.dtype)

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 ``(N, H, W, 3)`` -> features ``(N, ...)`` exactly as the cache stores them."""
        feats = stored(encode_frames(self.encoder, frames, len(frames), self.dtype, self.device))
        return torch.from_numpy(feats.astype(np.float32)).to(self.device)


def ensemble_weights(n: int, decay: float) -> np.ndarray:
    """Normalized weights of ``n`` overlapping predictions, oldest first: ``exp(-decay * i)``."""
    w = np.exp(-decay * np.arange(n))
    return w / w.sum()


class ActionQueue:
    """Timed action chunks -> one action per tick (latency compensation, temporal ensembling).

    A chunk inferred from the observation of tick ``i`` holds the actions of ticks ``i, i+1,
    ...``. Added at tick ``j > i`` (inference took ``j - i`` ticks), its first ``j - i`` actions
    are already past and are skipped. Without ensembling the newest chunk that covers a tick
    gives its action; with ``ensemble_decay = m`` every chunk that covers the tick contributes,
    the ``i``-th oldest with weight ``exp(-m * i)`` (ACT's temporal ensembling, Zhao et al.
    2023).
    """

    def __init__(self, ensemble_decay: float | None = None):
        check_ensemble_decay(ensemble_decay)
        self.decay = ensemble_decay
        self.chunks: list[tuple[int, np.ndarray]] = []  # (tick of its first action, (K, A))

    def add(self, first_tick: int, actions: np.ndarray, now_tick: int) -> int:
        """Add a chunk; returns how many of its actions were skipped as already past."""
        actions = np.asarray(actions)
        skipped = max(0, now_tick - first_tick)
        if skipped < len(actions):
            self.chunks.append((first_tick, actions))
        self.chunks = [(f, a) for f, a in self.chunks if f + len(a) > now_tick]
        return min(skipped, len(actions))

    def action(self, tick: int) -> np.ndarray | None:
        """The action for ``tick``, or ``None`` when no chunk covers it."""
        covering = [a[tick - f] for f, a in self.chunks if f <= tick < f + len(a)]
        if not covering:
            return None
        if self.decay is None:
            return covering[-1]
        return np.tensordot(ensemble_weights(len(covering), self.decay), np.stack(covering), 1)

    def remaining(self, tick: int) -> int:
        """Actions of the newest chunk for ``tick`` and after."""
        if not self.chunks:
            return 0
        first, actions = self.chunks[-1]
        return max(0, first + len(actions) - tick)

    def clear(self) -> None:
        self.chunks.clear()


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """Mean, p50/p95/p99, max and count of a latency record (ms); ``{}`` when empty."""
    if len(values) == 0:
        return {}
    v = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(v.mean()),
        **{f"p{q}": float(np.percentile(v, q)) for q in (50, 95, 99)},
        "max": float(v.max()),
        "calls": len(v),
    }


class ActionRunner:
    """Per-environment episode state of a chunking policy: observation histories, action queues,
    ticks, noise generators and the latency record; :meth:`predict` is the model's part
    (:class:`PolicyRunner`). See the module docstring."""

    def __init__(
        self,
        n_envs: int,
        n_obs_steps: int,
        n_action_steps: int,
        action_dim: int,
        ensemble_decay: float | None = None,
        infer_when_remaining: int = 0,
        device: str | torch.device = "cpu",
    ):
        if n_envs < 1 or n_obs_steps < 1 or n_action_steps < 1:
            raise ValueError("n_envs, n_obs_steps and n_action_steps must be >= 1")
        if not 0 <= infer_when_remaining < n_action_steps:
            raise ValueError(
                f"infer_when_remaining must be in [0, n_action_steps = {n_action_steps}), "
                f"got {infer_when_remaining}"
            )
        self.n_envs, self.n_obs_steps, self.n_action_steps = n_envs, n_obs_steps, n_action_steps
        self.action_dim = action_dim
        self.ensemble_decay, self.infer_when_remaining = ensemble_decay, infer_when_remaining
        self.device = torch.device(device)
        self.histories: list[deque] = [deque(maxlen=n_obs_steps) for _ in range(n_envs)]
        self.queues = [ActionQueue(ensemble_decay) for _ in range(n_envs)]
        self.ticks = [0] * n_envs
        #: The seed of each environment's current episode (``None``: unseeded or not started).
        self.seeds: list[int | None] = [None] * n_envs
        self.generators: list[torch.Generator | None] = [None] * n_envs
        self.latency: dict[str, list[float]] = {"encoder_ms": [], "policy_ms": []}
        #: Called by :meth:`predict` (of :class:`PolicyRunner`) with ``(envs, futures)``: the
        #: environments it predicted for and their whole predicted futures ``(n, K, A)`` from
        #: the current step on (``K = horizon - n_obs_steps + 1``; the first ``n_action_steps``
        #: are the executable chunk). ``None``: nobody listens (evaluation's records set it).
        self.on_predict: Callable[[Sequence[int], np.ndarray], None] | None = None

    # -- episodes -----------------------------------------------------------------------------

    def reset(self, seeds: Sequence[int | None], mask: Sequence[bool] | None = None) -> None:
        """Start new episodes in the environments of ``mask`` (all by default): empty history
        and queue, tick 0, and a noise generator seeded by the episode's seed (``None``: a
        fresh random one)."""
        if len(seeds) != self.n_envs:
            raise ValueError(f"reset needs one seed per environment ({self.n_envs})")
        for i in range(self.n_envs):
            if mask is not None and not mask[i]:
                continue
            self.histories[i].clear()
            self.queues[i].clear()
            self.ticks[i] = 0
            self.seeds[i] = seeds[i]
            gen = torch.Generator(self.device)
            if seeds[i] is None:
                gen.seed()
            else:
                gen.manual_seed(int(seeds[i]))
            self.generators[i] = gen

    def observe(self, i: int, obs: Observation) -> None:
        """Append environment ``i``'s newest observation (the first one of an episode fills the
        whole history, as the training windows pad episode starts)."""
        history = self.histories[i]
        if not history:
            history.extend([obs] * self.n_obs_steps)
        else:
            history.append(obs)

    def needs_chunk(self, i: int, tick: int | None = None) -> bool:
        """Whether environment ``i``'s newest chunk has at most ``infer_when_remaining``
        actions left at ``tick`` (default: its own tick)."""
        tick = self.ticks[i] if tick is None else tick
        return self.queues[i].remaining(tick) <= self.infer_when_remaining

    def predict(
        self, histories: Sequence[Sequence[Observation]], envs: Sequence[int]
    ) -> list[np.ndarray]:
        """Executable chunks ``(n_action_steps, A)``, one per history (of env ``envs[k]``)."""
        raise NotImplementedError

    def chunk_fn(self, i: int = 0) -> Callable[[list[Observation]], tuple[np.ndarray, dict]]:
        """``history -> (chunk, {"encoder_ms", "policy_ms"})`` for environment ``i``: what the
        robot loop's background worker runs."""

        def run(history: list[Observation]) -> tuple[np.ndarray, dict[str, float]]:
            before = {k: len(v) for k, v in self.latency.items()}
            chunk = self.predict([history], [i])[0]
            timing = {k: (v[-1] if len(v) > before[k] else 0.0) for k, v in self.latency.items()}
            return chunk, timing

        return run

    # -- the synchronous step -------------------------------------------------------------------

    def act(
        self,
        observations: Observation | Sequence[Observation],
        active: Sequence[bool] | None = None,
    ) -> np.ndarray:
        """One control step of every active environment: record its observation, predict chunks
        (in one batch) for those whose queue needs one, and return ``(n_envs, A)`` actions
        (zeros for inactive environments)."""
        if isinstance(observations, dict):
            observations = [{k: v[i] for k, v in observations.items()} for i in range(self.n_envs)]
        if len(observations) != self.n_envs:
            raise ValueError(f"act needs one observation per environment ({self.n_envs})")
        active = [True] * self.n_envs if active is None else list(active)
        for i in range(self.n_envs):
            if active[i]:
                self.observe(i, observations[i])
        need = [i for i in range(self.n_envs) if active[i] and self.needs_chunk(i)]
        if need:
            chunks = self.predict([list(self.histories[i]) for i in need], need)
            for i, chunk in zip(need, chunks, strict=True):
                self.queues[i].add(self.ticks[i], chunk, self.ticks[i])
        actions = np.zeros((self.n_envs, self.action_dim), dtype=np.float32)
        for i in range(self.n_envs):
            if active[i]:
                actions[i] = self.queues[i].action(self.ticks[i])
                self.ticks[i] += 1
        return actions

    def latency_summary(self) -> dict[str, dict[str, float]]:
        return {k: percentiles(v) for k, v in self.latency.items()}


class PolicyRunner(ActionRunner):
    """A trained policy run on ``n_envs`` environments at once (see the module docstring).

    Args:
        trained: the loaded artifact (:func:`s2policy.policies.artifact.load`).
        n_envs: environments driven together (one batched encoder + policy call).
        device: where the encoder and policy run (the policy is moved there).
        num_inference_steps: denoising steps of an iterative policy (``None``: the trained one).
        n_action_steps: actions executed per chunk (``None``: the policy's trained value); any
            number up to the end of the predicted horizon.
        ensemble_decay: ACT temporal ensembling of overlapping chunks (``None``: newest wins).
        infer_when_remaining: ask for a new chunk when the newest has at most this many actions
            left for the current tick and after (0: when it is used up; with ensembling, a larger
            value makes chunks overlap).
    """

    def __init__(
        self,
        trained: TrainedPolicy,
        n_envs: int = 1,
        device: str | torch.device = "cpu",
        num_inference_steps: int | None = None,
        n_action_steps: int | None = None,
        ensemble_decay: float | None = None,
        infer_when_remaining: int = 0,
    ):
        self.trained = trained
        self.policy = trained.policy.to(device).eval()
        if num_inference_steps is not None:
            self.policy.set_inference_steps(num_inference_steps)
        cfg = self.policy.cfg
        max_steps = cfg.horizon - cfg.action_start
        n_action_steps = cfg.n_action_steps if n_action_steps is None else n_action_steps
        if not 1 <= n_action_steps <= max_steps:
            raise ValueError(
                f"n_action_steps must be in [1, {max_steps}] (the predicted horizon {cfg.horizon} "
                f"from the current step {cfg.action_start}), got {n_action_steps}"
            )
        super().__init__(
            n_envs,
            cfg.n_obs_steps,
            n_action_steps,
            self.policy.action_dim,
            ensemble_decay,
            infer_when_remaining,
            device,
        )
        self.cameras = trained.cameras
        self.oracle_keys = trained.oracle_keys
        self.live = LiveEncoder.from_info(trained.encoder, self.device) if self.cameras else None
        if self.live is not None:
            self._check_feature_shapes()

    def _check_feature_shapes(self) -> None:
        """The rebuilt encoder must give the features the policy was trained on (a consistent
        edit of the encoder in ``policy.json`` would otherwise fail deep in a matrix product)."""
        for cam in self.cameras:
            height, width = self.trained.spec.cameras[cam]
            shape = tuple(self.live.encoder.output_shape(height, width))
            trained = tuple(self.trained.shape_meta["features"][cam])
            if shape != trained:
                raise ValueError(
                    f"the encoder of {self.trained.path} gives features of shape {shape} at "
                    f"{height}x{width} px, but the policy was trained on {trained} for camera "
                    f"{cam!r} (was policy.json edited?); restore the checkpoint or retrain"
                )

    # -- inference ----------------------------------------------------------------------------

    def executable(self, chunk: torch.Tensor) -> torch.Tensor:
        """The ``n_action_steps`` actions of predicted chunks ``(B, horizon, A)`` to execute from
        the current step on (index ``n_obs_steps - 1`` of the chunk)."""
        start = self.policy.cfg.action_start
        return chunk[:, start : start + self.n_action_steps]

    def features(self, histories: Sequence[Sequence[Observation]]) -> dict[str, torch.Tensor]:
        """The policy's observation batch for these histories: live features per camera
        ``(n, n_obs_steps, ...)`` from one encoder call (cameras x histories x steps), and the
        state ``(n, n_obs_steps, S)``."""
        obs: dict[str, torch.Tensor] = {}
        n = len(histories)
        if self.cameras:
            frames = np.stack(
                [np.stack([h[c] for h in hist]) for c in self.cameras for hist in histories]
            )
            t0 = time.perf_counter()
            feats = self.live(frames.reshape(-1, *frames.shape[2:]))  # (C*n*T, ...)
            self.latency["encoder_ms"].append(1e3 * (time.perf_counter() - t0))
            feats = feats.view(len(self.cameras), n, self.n_obs_steps, *feats.shape[1:])
            obs = {c: feats[k] for k, c in enumerate(self.cameras)}
        if self.oracle_keys:
            vectors = [[oracle_features(h, self.oracle_keys) for h in hist] for hist in histories]
            obs[PRIVILEGED] = torch.from_numpy(np.asarray(vectors, np.float32)).to(self.device)
        obs["state"] = torch.from_numpy(
            np.stack([np.stack([h["state"] for h in hist]) for hist in histories])
        ).to(self.device)
        return obs

    @torch.no_grad()
    def predict(
        self, histories: Sequence[Sequence[Observation]], envs: Sequence[int]
    ) -> list[np.ndarray]:
        """Executable chunks ``(n_action_steps, A)``, one per history, from one batched encoder
        and one batched policy call; env ``envs[k]``'s generator drives history ``k``'s noise."""
        obs = self.features(histories)
        gens = [self.generators[i] for i in envs]
        t0 = time.perf_counter()
        generator = gens if self.policy.stochastic and all(g is not None for g in gens) else None
        predicted = self.policy.predict_action(obs, generator=generator)
        chunk = self.executable(predicted)
        self.latency["policy_ms"].append(1e3 * (time.perf_counter() - t0))
        if self.on_predict is not None:
            start = self.policy.cfg.action_start
            self.on_predict(envs, predicted[:, start:].float().cpu().numpy())
        return list(chunk.float().cpu().numpy())

    def describe(self) -> dict[str, Any]:
        """The execution settings (for results files)."""
        return {
            "n_action_steps": self.n_action_steps,
            "ensemble_decay": self.ensemble_decay,
            "infer_when_remaining": self.infer_when_remaining,
            "num_inference_steps": self.policy.inference_steps,
        }
