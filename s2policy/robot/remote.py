"""A robot in another process (a ROS node, a vendor SDK) over ZeroMQ request/reply + msgpack.

Protocol (one request, one reply; both msgpack maps):

- request ``{"op": <name>, "args": {...}}`` with ``op`` one of ``spec``, ``reset`` (``seed``),
  ``observe``, ``act`` (``action``), ``hold``, ``status``, ``ping``;
- reply ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "<message>"}``;
  ``observe`` replies with the observation dict where ``timestamp`` is replaced by ``age_s``
  (seconds since it was taken), since the two machines' clocks differ.

numpy arrays travel as msgpack extension type 1: ``msgpack([dtype str, shape list, raw bytes])``.
:class:`RobotServer` serves any :class:`RobotInterface`; :class:`RemoteRobot` is the client. A
request that gets no reply within ``timeout_ms`` raises :class:`ConnectionError` (the loop then
holds); the client rebuilds its socket so that the next request can reach a restarted server.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import zmq

from s2policy.robot.interface import RobotInterface

logger = logging.getLogger(__name__)
NDARRAY = 1
OPS = ("spec", "reset", "observe", "act", "hold", "status", "ping")


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        return msgpack.ExtType(
            NDARRAY, msgpack.packb([arr.dtype.str, list(arr.shape), arr.tobytes()])
        )
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot send {type(obj).__name__} to a remote robot")


def _ext_hook(code: int, data: bytes) -> Any:
    if code == NDARRAY:
        dtype, shape, raw = msgpack.unpackb(data)
        return np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape).copy()
    return msgpack.ExtType(code, data)


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, default=_default, use_bin_type=True)


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False)


class RobotServer:
    """Serve ``robot`` on ``address`` (e.g. ``tcp://127.0.0.1:5555``) until :meth:`stop`."""

    def __init__(
        self, robot: RobotInterface, address: str, clock: Callable[[], float] = time.monotonic
    ):
        self.robot, self.address, self.clock = robot, address, clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op, args = request.get("op"), request.get("args") or {}
        if op not in OPS:
            return {"ok": False, "error": f"unknown op {op!r}; ops: {', '.join(OPS)}"}
        try:
            if op == "ping":
                return {"ok": True, "result": "pong"}
            if op == "act":
                self.robot.act(np.asarray(args["action"], dtype=np.float32))
                return {"ok": True, "result": None}
            if op == "reset":
                self.robot.reset(args.get("seed"))
                return {"ok": True, "result": None}
            if op == "observe":  # clocks differ between machines: send the age, not the time
                obs = dict(self.robot.observe())
                obs["age_s"] = self.clock() - float(obs.pop("timestamp"))
                return {"ok": True, "result": obs}
            return {"ok": True, "result": getattr(self.robot, op)()}
        except Exception as err:  # noqa: BLE001  (reported to the client)
            logger.exception("robot op %s failed", op)
            return {"ok": False, "error": f"{type(err).__name__}: {err}"}

    def serve(self) -> None:
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.REP)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(self.address)
        try:
            while not self._stop.is_set():
                if not sock.poll(50):
                    continue
                try:
                    request = unpack(sock.recv())
                except Exception as err:  # noqa: BLE001
                    sock.send(pack({"ok": False, "error": f"bad request: {err}"}))
                    continue
                sock.send(pack(self.handle(request)))
        finally:
            sock.close()

    def start(self) -> RobotServer:
        self._thread = threading.Thread(target=self.serve, daemon=True, name="robot-server")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


class RemoteRobot(RobotInterface):
    """Client of a :class:`RobotServer`."""

    def __init__(
        self, address: str, timeout_ms: int = 1000, clock: Callable[[], float] = time.monotonic
    ):
        self.address, self.timeout_ms, self.clock = address, timeout_ms, clock
        self._ctx = zmq.Context.instance()
        self._sock = self._connect()
        self._spec: dict[str, Any] | None = None

    def _connect(self) -> zmq.Socket:
        sock = self._ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, self.timeout_ms)
        sock.setsockopt(zmq.SNDTIMEO, self.timeout_ms)
        sock.connect(self.address)
        return sock

    def call(self, op: str, **args: Any) -> Any:
        try:
            self._sock.send(pack({"op": op, "args": args}))
            reply = unpack(self._sock.recv())
        except zmq.Again as err:
            self._sock.close()
            self._sock = self._connect()  # a REQ socket is stuck after a lost reply
            raise ConnectionError(
                f"robot server at {self.address} did not answer {op!r} within {self.timeout_ms} ms"
            ) from err
        if not reply.get("ok"):
            raise RuntimeError(f"robot server at {self.address}: {reply.get('error')}")
        return reply.get("result")

    def spec(self) -> dict[str, Any]:
        if self._spec is None:
            self._spec = self.call("spec")
        return self._spec

    def reset(self, seed: int | None = None) -> None:
        self.call("reset", seed=seed)

    def observe(self) -> dict[str, Any]:
        obs = self.call("observe")
        obs["timestamp"] = self.clock() - float(obs.pop("age_s"))  # on this machine's clock
        return obs

    def act(self, action: np.ndarray) -> None:
        self.call("act", action=np.asarray(action, dtype=np.float32))

    def hold(self) -> None:
        self.call("hold")

    def status(self) -> dict[str, Any]:
        return self.call("status")

    def close(self) -> None:
        self._sock.close()
