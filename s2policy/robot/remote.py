"""A robot in another process (a ROS node, a vendor SDK) over ZeroMQ request/reply + msgpack.

Protocol (one request, one reply; both msgpack maps):

- request ``{"op": <name>, "args": {...}, "lease": <token or null>}`` with ``op`` one of
  ``spec``, ``reset`` (``seed``), ``observe``, ``act`` (``action``), ``hold``, ``status``,
  ``ping``, ``acquire`` (``spec``: the data spec the client's policy needs, or null),
  ``release``;
- reply ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "<message>", "code": ...}``
  (``code``: ``"lease"`` when the lease rules refused the request, ``"safety"`` when the
  server's safety filter refused an action, ``"spec"`` when the robot does not offer what the
  client's policy needs — the handshake: the lease is refused — else null);
  ``observe`` replies with the observation dict where ``timestamp`` is replaced by ``age_s``
  (seconds since it was taken), since the two machines' clocks differ.

numpy arrays travel as msgpack extension type 1: ``msgpack([dtype str, shape list, raw bytes])``.
:class:`RobotServer` serves any :class:`RobotInterface`; :class:`RemoteRobot` is the client. A
request that gets no reply within ``timeout_ms`` raises :class:`ConnectionError` (the loop then
holds); the client rebuilds its socket so that the next request can reach a restarted server.

The server protects the robot on its own, whatever the client does:

- **Safety**: every ``act`` goes through the server's own :class:`SafetyFilter` (workspace box,
  step, yaw step and gripper limits of its :class:`SafetyConfig`, against the robot's latest
  ``state``): an action outside the limits is clipped and logged; a non-finite or misshapen one
  is refused and the robot holds.
- **Lease**: one client controls the robot at a time. ``acquire`` hands out a random token;
  ``act`` and ``reset`` need the live token (the other ops, ``hold`` included, are open to every
  client). Every request that carries the token renews the lease; after ``lease_timeout_s``
  without one, the server holds the robot and frees the lease. ``release`` frees it at once
  (and holds). :class:`RemoteRobot` acquires the lease in :meth:`RemoteRobot.reset` (the start
  of an episode), sends its token with every request (the loop observes every tick: that is the
  heartbeat) and releases it on :meth:`RemoteRobot.close`; ``act`` never acquires, so a client
  whose lease expired cannot resume moving the robot without a new ``reset``. The lease is
  watched by a thread of its own (the watchdog), not by the request loop: whatever a request
  does, an expired lease holds the robot.
- **Any frame**: the server's socket is a ZeroMQ ROUTER (no request/reply state machine to break):
  a multipart, malformed or undecodable request gets an error reply, a request over
  ``MAX_REQUEST_BYTES`` disconnects its sender, and an error while handling one request is
  logged and answered; none stops the server. (The watchdog and the requests share one lock
  around the robot: a robot call that never returns blocks the watchdog too, so a robot's
  driver must time its own calls out.)
- **CURVE** (ZeroMQ's public-key authentication and encryption): with
  ``server_secret_file`` and ``authorized_clients_dir`` (keys from ``python -m
  s2policy.robot.keys``), only clients whose public key file (``<name>.key``) is in that folder
  when the server starts can connect; the others get no reply. Without keys the server binds
  only loopback addresses (``127.0.0.0/8``, ``localhost``, ``::1``, ``ipc://``, ``inproc://``)
  unless ``allow_insecure=True`` (then it logs a warning).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from s2policy.data.spec import DataSpec
from s2policy.robot.interface import RobotInterface
from s2policy.robot.safety import SafetyConfig, SafetyFilter

logger = logging.getLogger(__name__)
NDARRAY = 1
OPS = ("spec", "reset", "observe", "act", "hold", "status", "ping", "acquire", "release")
#: Ops that need the lease: they move the robot.
MOVING_OPS = ("act", "reset")
#: Largest request the server reads (bytes); an action is a few dozen.
MAX_REQUEST_BYTES = 1 << 20
#: Most frames of one message the server answers (a REQ client sends its envelope + 1 body).
MAX_FRAMES = 8
#: How often the watchdog looks at the lease (s; at most a quarter of the lease timeout).
WATCHDOG_PERIOD_S = 0.05
#: A filtered action within this of the requested one counts as unchanged (float32 rounding of
#: an action the client's own filter already clipped).
CLIP_ATOL = 1e-5


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


def is_loopback(address: str) -> bool:
    """Whether a ZeroMQ endpoint stays on this machine (``ipc``, ``inproc``, loopback ``tcp``)."""
    scheme, _, rest = address.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = rest.rsplit(":", 1)[0].split(";")[-1].strip("[]")  # tcp://[src;]host:port
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "*", an interface name, a host name
        return False


def _load_keypair(path: str | Path, what: str) -> tuple[bytes, bytes]:
    public, secret = zmq.auth.load_certificate(path)
    if secret is None:
        raise ValueError(
            f"{what} {path} holds no secret key: pass the <name>.key_secret file written by "
            "python -m s2policy.robot.keys"
        )
    return public, secret


class LeaseError(RuntimeError, ValueError):
    """The server refused a request under its lease rules (another client controls the robot,
    or this client's lease expired)."""


class SafetyRefused(RuntimeError, ValueError):
    """The server's safety filter refused an action (non-finite or misshapen); it held."""


class SpecMismatch(RuntimeError, ValueError):
    """The server's robot does not offer what the client's policy needs (cameras, image sizes,
    state or action sizes): it refused the lease."""


@dataclass
class _Lease:
    token: str
    client: str  # for the logs: the client's CURVE public key, or "anonymous"
    last_seen: float


def _error(message: str, code: str | None = None) -> dict[str, Any]:
    return {"ok": False, "error": message, "code": code}


class RobotServer:
    """Serve ``robot`` on ``address`` (e.g. ``tcp://127.0.0.1:5555``) until :meth:`stop`.

    Args:
        robot: the robot.
        address: where to bind; ``tcp://127.0.0.1:*`` binds a free port, then read
            :attr:`endpoint` after :meth:`start`.
        clock: the robot's monotonic clock (observation ages, lease expiry).
        safety: the server's own limits (default: :class:`SafetyConfig`'s defaults); set them
            for the arm's workspace.
        lease_timeout_s: the lease expires (the robot holds) after this long without a request
            from its holder; make it longer than the control period.
        server_secret_file: the server's ``<name>.key_secret`` (CURVE); with
            ``authorized_clients_dir``.
        authorized_clients_dir: the folder of the authorized clients' public ``<name>.key``
            files (read when the server starts).
        allow_insecure: bind a non-loopback address without keys (anyone who can reach it may
            then lease the robot; the server's safety limits still apply).
    """

    def __init__(
        self,
        robot: RobotInterface,
        address: str,
        clock: Callable[[], float] = time.monotonic,
        *,
        safety: SafetyConfig | None = None,
        lease_timeout_s: float = 2.0,
        server_secret_file: str | Path | None = None,
        authorized_clients_dir: str | Path | None = None,
        allow_insecure: bool = False,
    ):
        if lease_timeout_s <= 0:
            raise ValueError(f"lease_timeout_s must be > 0, got {lease_timeout_s}")
        if (server_secret_file is None) != (authorized_clients_dir is None):
            raise ValueError("pass both server_secret_file and authorized_clients_dir, or neither")
        self.robot, self.address, self.clock = robot, address, clock
        self.lease_timeout_s = float(lease_timeout_s)
        self._keys: tuple[bytes, bytes] | None = None
        self.authorized_clients_dir = None
        if server_secret_file is not None:
            self._keys = _load_keypair(server_secret_file, "server_secret_file")
            self.authorized_clients_dir = Path(authorized_clients_dir)
            if not self.authorized_clients_dir.is_dir():
                raise ValueError(f"authorized_clients_dir {authorized_clients_dir} is no folder")
            if not any(self.authorized_clients_dir.glob("*.key")):
                logger.warning(
                    "no <name>.key in %s: every client will be refused", authorized_clients_dir
                )
        elif not is_loopback(address):
            if not allow_insecure:
                raise ValueError(
                    f"refusing to serve a robot on {address} without CURVE keys: anyone on the "
                    "network could move it. Make keys (python -m s2policy.robot.keys) and pass "
                    "server_secret_file and authorized_clients_dir, bind a loopback address, "
                    "or pass allow_insecure=True"
                )
            logger.warning(
                "serving the robot on %s WITHOUT authentication or encryption (allow_insecure)",
                address,
            )
        spec = robot.spec()
        self.action_dim = int(spec["action_dim"])
        self.safety = SafetyFilter(safety or SafetyConfig(), spec)
        #: Safety events of the actions the server changed or refused, and expired leases.
        self.events: Counter = Counter()
        self.lease: _Lease | None = None
        #: The bound endpoint (the port resolved), once :meth:`start` returned.
        self.endpoint: str | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._bind_error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None
        #: One request or watchdog action on the robot (and the lease) at a time.
        self._robot_lock = threading.RLock()

    # ------------------------------------------------------------------ lease
    def _expire_lease(self) -> None:
        with self._robot_lock:
            self._expire_lease_locked()

    def _expire_lease_locked(self) -> None:
        lease = self.lease
        if lease is None or self.clock() - lease.last_seen <= self.lease_timeout_s:
            return
        self.lease = None
        self.events["lease_expired"] += 1
        logger.warning(
            "lease of client %s expired (no request for %.2f s > lease_timeout_s %.2f): "
            "holding the robot",
            lease.client,
            self.clock() - lease.last_seen,
            self.lease_timeout_s,
        )
        try:
            self.robot.hold()
        except Exception:  # noqa: BLE001  (nothing more the server can do)
            logger.exception("could not hold the robot after the lease expired")

    def _acquire(self, client: str, holds: bool, args: dict[str, Any]) -> dict[str, Any]:
        if args.get("spec") is not None:  # the client's policy: checked against this robot
            try:
                wanted = DataSpec.from_dict(args["spec"])
            except Exception as err:  # noqa: BLE001  (any map may arrive)
                return _error(f"bad request: spec is not a data spec ({type(err).__name__})")
            robot = DataSpec.from_robot(self.robot.spec())
            problems = wanted.mismatches(robot)
            if problems:
                logger.warning(
                    "refused the lease to client %s: its policy needs %s, the robot has %s",
                    client, wanted.describe(), "; ".join(problems),
                )  # fmt: skip
                return _error(
                    f"the robot does not match the client's policy: {'; '.join(problems)} "
                    f"(policy: {wanted.describe()}; robot: {robot.describe()})",
                    "spec",
                )
        if holds:
            return {
                "ok": True,
                "result": {"token": self.lease.token, "timeout_s": self.lease_timeout_s},
            }
        if self.lease is not None:
            idle = self.clock() - self.lease.last_seen
            logger.warning(
                "refused the lease to client %s: client %s holds it", client, self.lease.client
            )
            return _error(
                f"the robot is leased to another client (last request {idle:.2f} s ago); it is "
                f"freed by that client's release or after {self.lease_timeout_s:g} s without "
                "its requests",
                "lease",
            )
        self.lease = _Lease(secrets.token_hex(16), client, self.clock())
        logger.info("lease granted to client %s", client)
        return {
            "ok": True,
            "result": {"token": self.lease.token, "timeout_s": self.lease_timeout_s},
        }

    # ------------------------------------------------------------------ safety
    def _act(self, raw: Any, client: str) -> dict[str, Any]:
        action = np.asarray(raw, dtype=np.float64)
        if action.shape != (self.action_dim,):
            self.events["bad_shape"] += 1
            logger.warning(
                "refused an action of shape %s from client %s (need (%d,)): holding",
                action.shape,
                client,
                self.action_dim,
            )
            self.robot.hold()
            return _error(
                f"action shape {action.shape} != ({self.action_dim},): refused, robot held",
                "safety",
            )
        state = np.asarray(self.robot.observe()["state"], dtype=np.float64)
        safe, events = self.safety.filter(action, state)
        if safe is None:
            self.events.update(events)
            logger.warning("refused action %s from client %s (%s): holding", action, client, events)
            self.robot.hold()
            return _error(
                f"action refused by the robot's safety filter ({events}); robot held", "safety"
            )
        if events and np.allclose(safe, action, rtol=0, atol=CLIP_ATOL):
            events = []  # only float rounding of an action the client had clipped already
        if events:
            self.events.update(events)
            logger.warning(
                "clipped action from client %s (%s): requested %s, applied %s",
                client,
                ", ".join(events),
                np.array2string(action, precision=4),
                np.array2string(safe, precision=4),
            )
        self.robot.act(safe)
        return {"ok": True, "result": events}

    # ------------------------------------------------------------------ requests
    def handle(self, request: Any, client: str = "anonymous") -> dict[str, Any]:
        """One request -> its reply; ``client`` names the sender in the logs."""
        with self._robot_lock:
            return self._handle(request, client)

    def _handle(self, request: Any, client: str) -> dict[str, Any]:
        reply = self._reply(request, client)
        lease = self.lease  # a long request (a reset) is a heartbeat when it ends, too
        if lease is not None and isinstance(request, dict):
            token = request.get("lease")
            if isinstance(token, str) and hmac.compare_digest(token.encode(), lease.token.encode()):
                lease.last_seen = self.clock()
        return reply

    def _reply(self, request: Any, client: str) -> dict[str, Any]:
        if not isinstance(request, dict):
            return _error(f"bad request: a map expected, got {type(request).__name__}")
        op, args, token = request.get("op"), request.get("args") or {}, request.get("lease")
        if op not in OPS:
            return _error(f"unknown op {op!r}; ops: {', '.join(OPS)}")
        if not isinstance(args, dict):
            return _error("bad request: args must be a map")
        self._expire_lease()
        holds = (
            self.lease is not None
            and isinstance(token, str)
            and hmac.compare_digest(token.encode(), self.lease.token.encode())
        )
        if holds:
            self.lease.last_seen = self.clock()  # every request of the holder is a heartbeat
        try:
            if op == "ping":
                return {"ok": True, "result": "pong"}
            if op == "acquire":
                return self._acquire(client, holds, args)
            if op == "release":
                if holds:
                    logger.info("client %s released the lease: holding the robot", client)
                    self.lease = None
                    self.robot.hold()
                return {"ok": True, "result": holds}
            if op in MOVING_OPS and not holds:
                if self.lease is None:
                    why = "no lease (expired, released, or never acquired): send 'acquire' first"
                else:
                    why = "the robot is leased to another client"
                logger.warning("refused %r from client %s: %s", op, client, why)
                return _error(f"{op!r} refused: {why}", "lease")
            if op == "act":
                return self._act(args["action"], client)
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
            return _error(f"{type(err).__name__}: {err}")

    def serve(self) -> None:
        ctx = zmq.Context()  # its own: one ZAP authenticator per context
        auth = None
        sock = ctx.socket(zmq.ROUTER)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
            if self._keys is not None:
                auth = ThreadAuthenticator(ctx, log=logger.getChild("auth"))
                auth.start()
                auth.configure_curve(domain="*", location=str(self.authorized_clients_dir))
                sock.curve_publickey, sock.curve_secretkey = self._keys
                sock.curve_server = True
            sock.bind(self.address)
            self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        except BaseException as err:
            self._bind_error = err
            self._ready.set()
            sock.close()
            if auth is not None:
                auth.stop()
            ctx.term()
            raise
        self._ready.set()
        # the lease's watchdog: a thread of its own, which outlives this loop until stop()
        self._watchdog = threading.Thread(
            target=self._watch_lease, daemon=True, name="robot-lease-watchdog"
        )
        self._watchdog.start()
        logger.info(
            "robot server on %s (%s)",
            self.endpoint,
            "CURVE, authorized clients in " + str(self.authorized_clients_dir)
            if self._keys is not None
            else "no keys",
        )
        try:
            while not self._stop.is_set():
                try:
                    if sock.poll(50):
                        self._serve_one(sock)
                except Exception:  # noqa: BLE001  (nothing a client sends stops the server)
                    logger.exception("robot server: a request failed; serving on")
        finally:
            sock.close()
            if auth is not None:
                auth.stop()
            ctx.term()

    def _serve_one(self, sock: zmq.Socket) -> None:
        """Receive one message on the ROUTER socket and answer it (or drop it)."""
        frames = sock.recv_multipart(copy=False)
        # the envelope: the sender's routing id, then (REQ clients) an empty delimiter
        end = next((i for i, f in enumerate(frames) if not f.bytes), None)
        split = end + 1 if end is not None else 1
        envelope, body = frames[:split], frames[split:]
        client = "anonymous"
        if self._keys is not None and body:
            try:
                client = body[-1].get("User-Id")  # the client's public key (z85)
            except zmq.ZMQError:
                pass
        if len(body) != 1 or len(frames) > MAX_FRAMES:
            with self._robot_lock:
                self.events["bad_frame"] += 1
            logger.warning(
                "refused a request of %d frames from client %s (one expected)", len(body), client
            )
            reply = _error(f"bad request: one frame expected, got {len(body)}")
        else:
            try:
                request = unpack(body[0].bytes)
            except Exception as err:  # noqa: BLE001  (any bytes may arrive)
                with self._robot_lock:
                    self.events["bad_frame"] += 1
                reply = _error(f"bad request: not a msgpack map ({type(err).__name__}: {err})")
            else:
                reply = self.handle(request, client)
        try:
            packed = pack(reply)
        except Exception as err:  # noqa: BLE001  (e.g. a result msgpack cannot carry)
            logger.exception("could not pack the reply to client %s", client)
            packed = pack(_error(f"{type(err).__name__}: {err}"))
        sock.send_multipart([*envelope, packed])

    def _watch_lease(self) -> None:
        """The watchdog: hold the robot when the lease expires, whatever the request loop does."""
        period = min(WATCHDOG_PERIOD_S, self.lease_timeout_s / 4)
        while not self._stop.wait(period):
            try:
                self._expire_lease()
            except Exception:  # noqa: BLE001  (keep watching)
                logger.exception("robot server watchdog failed to check the lease")

    def start(self) -> RobotServer:
        """Serve in a background thread; returns once bound (raises if binding failed)."""
        self._thread = threading.Thread(target=self.serve, daemon=True, name="robot-server")
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError(f"robot server did not bind {self.address} within 10 s")
        if self._bind_error is not None:
            self._thread.join(timeout=5)
            raise self._bind_error
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in (self._thread, self._watchdog):
            if thread is not None:
                thread.join(timeout=5)


class RemoteRobot(RobotInterface):
    """Client of a :class:`RobotServer`.

    With ``client_secret_file`` (this client's ``<name>.key_secret``) and ``server_public_file``
    (the server's ``<name>.key``) it talks CURVE; the server must list this client's public
    ``<name>.key`` in its authorized folder. :meth:`reset` acquires the lease, :meth:`close`
    releases it.
    """

    def __init__(
        self,
        address: str,
        timeout_ms: int = 1000,
        clock: Callable[[], float] = time.monotonic,
        *,
        client_secret_file: str | Path | None = None,
        server_public_file: str | Path | None = None,
        policy_spec: DataSpec | None = None,
    ):
        if (client_secret_file is None) != (server_public_file is None):
            raise ValueError("pass both client_secret_file and server_public_file, or neither")
        self.address, self.timeout_ms, self.clock = address, timeout_ms, clock
        #: What the client's policy needs; sent with ``acquire``, so the server refuses the
        #: lease on a robot that does not offer it.
        self.policy_spec = policy_spec
        self._curve: tuple[bytes, bytes, bytes] | None = None
        if client_secret_file is not None:
            public, secret = _load_keypair(client_secret_file, "client_secret_file")
            server_public, _ = zmq.auth.load_certificate(server_public_file)
            self._curve = (public, secret, server_public)
        elif not is_loopback(address):
            logger.warning(
                "connecting to the robot at %s without CURVE keys: unauthenticated and "
                "unencrypted (a secured server will not answer)",
                address,
            )
        self._ctx = zmq.Context.instance()
        self._sock = self._connect()
        self._spec: dict[str, Any] | None = None
        self._lease: str | None = None

    def _connect(self) -> zmq.Socket:
        sock = self._ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, self.timeout_ms)
        sock.setsockopt(zmq.SNDTIMEO, self.timeout_ms)
        if self._curve is not None:
            sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = self._curve
        sock.connect(self.address)
        return sock

    def call(self, op: str, **args: Any) -> Any:
        try:
            self._sock.send(pack({"op": op, "args": args, "lease": self._lease}))
            reply = unpack(self._sock.recv())
        except zmq.Again as err:
            self._sock.close()
            self._sock = self._connect()  # a REQ socket is stuck after a lost reply
            raise ConnectionError(
                f"robot server at {self.address} did not answer {op!r} within {self.timeout_ms} ms"
            ) from err
        if not reply.get("ok"):
            message = f"robot server at {self.address}: {reply.get('error')}"
            if reply.get("code") == "lease":
                if op != "acquire":
                    self._lease = None  # ours expired or was never valid on this server
                raise LeaseError(message)
            if reply.get("code") == "safety":
                raise SafetyRefused(message)
            if reply.get("code") == "spec":
                raise SpecMismatch(message)
            raise RuntimeError(message)
        return reply.get("result")

    @property
    def has_lease(self) -> bool:
        """Whether this client holds a lease token (as far as it knows)."""
        return self._lease is not None

    def acquire(self) -> None:
        """Take the lease (raises :class:`LeaseError` while another client holds it, and
        :class:`SpecMismatch` when the robot does not fit :attr:`policy_spec`)."""
        spec = self.policy_spec.to_dict() if self.policy_spec is not None else None
        self._lease = self.call("acquire", spec=spec)["token"]

    def release(self) -> None:
        """Give the lease back (the server holds the robot)."""
        if self._lease is None:
            return
        try:
            self.call("release")
        finally:
            self._lease = None

    def spec(self) -> dict[str, Any]:
        if self._spec is None:
            self._spec = self.call("spec")
        return self._spec

    def reset(self, seed: int | None = None) -> None:
        """Start an episode; acquires the lease first if this client has none."""
        if self._lease is None:
            self.acquire()
        try:
            self.call("reset", seed=seed)
        except LeaseError:  # ours expired since: an episode start may take a new one
            self.acquire()
            self.call("reset", seed=seed)

    def observe(self) -> dict[str, Any]:
        obs = self.call("observe")
        obs["timestamp"] = self.clock() - float(obs.pop("age_s"))  # on this machine's clock
        return obs

    def act(self, action: np.ndarray) -> None:
        """Apply one action; needs the lease (never acquires it: see the module docstring)."""
        self.call("act", action=np.asarray(action, dtype=np.float32))

    def hold(self) -> None:
        self.call("hold")

    def status(self) -> dict[str, Any]:
        return self.call("status")

    def close(self) -> None:
        try:
            self.release()
        except (ConnectionError, RuntimeError) as err:
            logger.warning("could not release the robot's lease: %s", err)
        self._sock.close()
