"""Where chunk inference runs while the control loop keeps its rate: a background thread
(:class:`ThreadWorker`), or, in tests, a worker whose latency is simulated on a controllable
clock (:class:`SimulatedLatencyWorker`)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

InferFn = Callable[[list[dict[str, Any]]], tuple[np.ndarray, dict[str, float]]]


@dataclass
class ChunkResult:
    tick: int  # tick of the observation the chunk was inferred from
    actions: np.ndarray  # (K, A)
    latency_s: float  # submit -> result
    timing: dict[str, float]  # encoder_ms, policy_ms


class ThreadWorker:
    """One inference at a time in a daemon thread; errors are re-raised by :meth:`poll`."""

    def __init__(self, infer: InferFn, clock: Callable[[], float]):
        self.infer, self.clock = infer, clock
        self._lock = threading.Lock()
        self._results: list[ChunkResult] = []
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, history: list[dict[str, Any]], tick: int) -> None:
        if self.busy:
            raise RuntimeError("an inference is already running")
        start = self.clock()

        def work():
            try:
                actions, timing = self.infer(history)
                result = ChunkResult(tick, actions, self.clock() - start, timing)
                with self._lock:
                    self._results.append(result)
            except BaseException as err:  # noqa: BLE001  (handed to the control thread)
                with self._lock:
                    self._error = err

        self._thread = threading.Thread(target=work, daemon=True, name="chunk-inference")
        self._thread.start()

    def wait(self, timeout_s: float) -> None:
        """Block until the running inference finishes or ``timeout_s`` passes."""
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)

    def poll(self) -> list[ChunkResult]:
        with self._lock:
            if self._error is not None:
                err, self._error = self._error, None
                raise err
            results, self._results = self._results, []
        return results

    def drain(self, timeout_s: float = 30.0) -> None:
        """Let a running inference end and drop its result (a new episode starts: a chunk of
        the previous one must never be executed in it)."""
        self.wait(timeout_s)
        with self._lock:
            self._results, self._error = [], None

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=10)


class SimulatedLatencyWorker:
    """Runs ``infer`` at submit time but releases the result ``latency_s`` later on ``clock``."""

    def __init__(self, infer: InferFn, clock: Callable[[], float], latency_s: float):
        self.infer, self.clock, self.latency_s = infer, clock, latency_s
        self._pending: tuple[float, ChunkResult] | None = None

    @property
    def busy(self) -> bool:
        return self._pending is not None

    def submit(self, history: list[dict[str, Any]], tick: int) -> None:
        actions, timing = self.infer(history)
        self._pending = (
            self.clock() + self.latency_s,
            ChunkResult(tick, actions, self.latency_s, timing),
        )

    def wait(self, timeout_s: float) -> None:
        """Simulated time does not pass while waiting; only a zero-latency result is ready."""

    def poll(self) -> list[ChunkResult]:
        if self._pending is not None and self.clock() >= self._pending[0] - 1e-9:
            result, self._pending = self._pending[1], None
            return [result]
        return []

    def drain(self, timeout_s: float = 30.0) -> None:
        """Drop a pending result (see :meth:`ThreadWorker.drain`)."""
        self._pending = None

    def close(self) -> None:
        pass
