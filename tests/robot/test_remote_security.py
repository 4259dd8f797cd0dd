"""The robot server protects the robot on its own: CURVE keys, one leased client, its own limits.

Everything runs over localhost on ephemeral ports (``tcp://127.0.0.1:*``). Lease expiry runs on
a fake clock, so no test depends on how fast this machine is; real-time waits are bounded.
"""

import logging
import shutil
import time

import numpy as np
import pytest
import zmq.auth

from s2policy.robot.keys import RobotKeysConfig, main, make_keys
from s2policy.robot.remote import (
    LeaseError,
    RemoteRobot,
    RobotServer,
    SafetyRefused,
    is_loopback,
)
from s2policy.robot.safety import SafetyConfig

SPEC = {
    "task": "cube_pick",
    "cameras": ["front"],
    "image_size": [8, 8],
    "action_dim": 5,
    "control_hz": 10.0,
    "max_step_m": 0.03,
    "max_yaw_step_rad": 0.25,
    "yaw_control": True,
}
STILL = np.zeros(5, np.float32)


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


class FakeRobot:
    """Records every reset, action and hold it is told."""

    def __init__(self, clock, state=(0.0, 0.0, 0.1, 0.0, 0.04)):
        self.clock, self.state = clock, np.array(state, np.float32)
        self.actions, self.holds, self.resets = [], 0, 0

    def spec(self):
        return SPEC

    def reset(self, seed=None):
        self.resets += 1

    def observe(self):
        return {
            "front": np.zeros((8, 8, 3), np.uint8),
            "state": self.state,
            "timestamp": self.clock(),
        }

    def act(self, action):
        self.actions.append(np.asarray(action))

    def hold(self):
        self.holds += 1

    def status(self):
        return {"success": None, "done": False}


def wait_until(condition, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def closing():
    """Servers and clients to stop/close after the test, whatever happens."""
    things = []
    yield things
    for thing in reversed(things):
        (thing.stop if isinstance(thing, RobotServer) else thing.close)()


def serve(closing, robot, clock, **kw):
    server = RobotServer(robot, "tcp://127.0.0.1:*", clock=clock, **kw).start()
    closing.append(server)
    return server


def connect(closing, server, clock, timeout_ms=2000, **kw):
    client = RemoteRobot(server.endpoint, timeout_ms, clock=clock, **kw)
    closing.append(client)
    return client


@pytest.fixture
def keys(tmp_path):
    """A server pair, an authorized client ``alice`` and an unknown one ``mallory``."""
    for name in ("server", "alice", "mallory"):
        make_keys(RobotKeysConfig(dir=str(tmp_path / "keys"), name=name))
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    shutil.copy(tmp_path / "keys" / "alice.key", authorized)
    return tmp_path / "keys", authorized


# ------------------------------------------------------------------ authentication
def test_unknown_clients_are_refused_and_the_robot_does_not_move(keys, clock, closing):
    folder, authorized = keys
    robot = FakeRobot(clock)
    server = serve(
        closing,
        robot,
        clock,
        server_secret_file=folder / "server.key_secret",
        authorized_clients_dir=authorized,
    )
    server_key = folder / "server.key"
    # a key the server does not list, though it knows the server's public key
    mallory = connect(
        closing,
        server,
        clock,
        300,
        client_secret_file=folder / "mallory.key_secret",
        server_public_file=server_key,
    )
    with pytest.raises(ConnectionError, match="did not answer"):
        mallory.reset(seed=1)
    with pytest.raises(ConnectionError):
        mallory.act(np.full(5, 0.5, np.float32))
    plain = connect(closing, server, clock, 300)  # no keys at all
    with pytest.raises(ConnectionError):
        plain.reset(seed=1)
    with pytest.raises(ConnectionError):
        plain.call("act", action=np.full(5, 0.5, np.float32))
    assert robot.resets == 0 and robot.actions == [] and server.lease is None

    alice = connect(
        closing,
        server,
        clock,
        client_secret_file=folder / "alice.key_secret",
        server_public_file=server_key,
    )
    alice.reset(seed=1)
    alice.act(np.array([0.1, 0, 0, 0, 0], np.float32))
    assert robot.resets == 1 and len(robot.actions) == 1
    assert server.lease.client == zmq.auth.load_certificate(folder / "alice.key")[0].decode()


def test_non_loopback_address_needs_keys(clock, caplog):
    robot = FakeRobot(clock)
    for address in ("tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://192.0.2.10:5555"):
        assert not is_loopback(address)
        with pytest.raises(ValueError, match="without CURVE keys"):
            RobotServer(robot, address)
    for address in ("tcp://127.0.0.1:5555", "tcp://localhost:1", "tcp://[::1]:1", "ipc:///x"):
        assert is_loopback(address)
    with caplog.at_level(logging.WARNING, logger="s2policy.robot.remote"):
        RobotServer(robot, "tcp://0.0.0.0:5555", allow_insecure=True)  # not started
    assert "WITHOUT authentication" in caplog.text
    with pytest.raises(ValueError, match="both"):
        RobotServer(robot, "tcp://127.0.0.1:*", server_secret_file="server.key_secret")


# ------------------------------------------------------------------ server-side safety
def test_out_of_box_actions_are_clipped_by_the_server(clock, closing, caplog):
    robot = FakeRobot(clock, state=(0.245, 0.0, 0.1, 0.0, 0.04))  # 5 mm from the box's +x wall
    server = serve(closing, robot, clock, safety=SafetyConfig(max_step_m=0.02))
    client = connect(closing, server, clock)
    client.reset()
    with caplog.at_level(logging.WARNING, logger="s2policy.robot.remote"):
        client.act(np.array([1.0, 0, 0, 0, 0], np.float32))  # 3 cm toward the wall
    (applied,) = robot.actions
    # 3 cm -> 2 cm (max step) -> 5 mm (workspace): x + 0.03 * action stays inside the box
    assert 0.245 + 0.03 * applied[0] == pytest.approx(0.25, abs=1e-6)
    assert server.events["workspace"] == 1 and server.events["max_step"] == 1
    assert "clipped action" in caplog.text and "workspace" in caplog.text

    client.act(np.array([-0.1, 0, 0, 0, 0.5], np.float32))  # inside every limit: unchanged
    np.testing.assert_allclose(robot.actions[-1], [-0.1, 0, 0, 0, 0.5], atol=1e-6)

    holds = robot.holds
    with pytest.raises(SafetyRefused, match="nonfinite"):
        client.act(np.array([np.nan, 0, 0, 0, 0], np.float32))
    with pytest.raises(SafetyRefused, match="shape"):
        client.call("act", action=np.zeros(3, np.float32))
    assert len(robot.actions) == 2 and robot.holds == holds + 2  # refused -> held
    assert server.events["nonfinite"] == 1


# ------------------------------------------------------------------ lease
def test_a_second_client_cannot_take_over_while_the_first_holds_the_lease(clock, closing):
    robot = FakeRobot(clock)
    server = serve(closing, robot, clock, lease_timeout_s=1.0)
    first, second = connect(closing, server, clock), connect(closing, server, clock)
    first.reset(seed=1)
    first.act(np.array([0.1, 0, 0, 0, 0], np.float32))
    with pytest.raises(LeaseError, match="leased to another client"):
        second.reset(seed=2)
    with pytest.raises(LeaseError):
        second.act(np.array([-0.5, 0, 0, 0, 0], np.float32))
    second._lease = "0" * 32  # a guessed token
    with pytest.raises(LeaseError):
        second.act(np.array([-0.5, 0, 0, 0, 0], np.float32))
    second._lease = None
    assert second.observe()["state"].shape == (5,)  # watching is open to everyone
    assert robot.resets == 1 and len(robot.actions) == 1

    clock.t += 0.9  # the first client keeps its lease alive with its requests (heartbeats) ...
    first.observe()
    clock.t += 0.9
    first.act(np.array([0.1, 0, 0, 0, 0], np.float32))
    with pytest.raises(LeaseError):
        second.reset(seed=2)
    assert len(robot.actions) == 2

    first.close()  # ... and releases it on close: the robot holds and the second may take over
    assert server.lease is None and robot.holds >= 1
    second.reset(seed=2)
    second.act(np.array([-0.1, 0, 0, 0, 0], np.float32))
    assert robot.resets == 2 and len(robot.actions) == 3


def test_a_vanished_client_makes_the_robot_hold_after_the_lease_timeout(clock, closing):
    robot = FakeRobot(clock)
    server = serve(closing, robot, clock, lease_timeout_s=1.0)
    client = connect(closing, server, clock)
    client.reset(seed=1)
    client.act(np.array([0.1, 0, 0, 0, 0], np.float32))
    assert robot.holds == 0

    clock.t += 0.5  # the client goes silent; within the timeout nothing happens
    time.sleep(0.2)
    assert robot.holds == 0 and server.lease is not None
    clock.t += 0.6  # 1.1 s without a request: the idle server notices by itself
    assert wait_until(lambda: robot.holds == 1), "the server did not hold the robot"
    assert server.lease is None and server.events["lease_expired"] == 1

    # the stale client cannot resume moving the robot ...
    with pytest.raises(LeaseError, match="no lease"):
        client.act(np.array([0.1, 0, 0, 0, 0], np.float32))
    assert len(robot.actions) == 1
    # ... and another client may now take the robot
    other = connect(closing, server, clock)
    other.reset(seed=2)
    other.act(np.array([0.1, 0, 0, 0, 0], np.float32))
    assert robot.resets == 2 and len(robot.actions) == 2


# ------------------------------------------------------------------ key command
def test_the_key_command_writes_usable_keys(tmp_path, clock, closing):
    folder = tmp_path / "keys"
    main([f"dir={folder}", "name=server"])
    main([f"dir={folder}", "name=laptop"])
    for name in ("server", "laptop"):
        public, secret = zmq.auth.load_certificate(folder / f"{name}.key")
        assert len(public) == 40 and secret is None  # the public file holds no secret
        assert zmq.auth.load_certificate(folder / f"{name}.key_secret") == (
            public,
            zmq.auth.load_certificate(folder / f"{name}.key_secret")[1],
        )
        assert (folder / f"{name}.key_secret").stat().st_mode & 0o077 == 0  # owner-only
    with pytest.raises(FileExistsError, match="overwrite"):
        make_keys(RobotKeysConfig(dir=str(folder), name="laptop"))
    with pytest.raises(ValueError, match="name"):
        RobotKeysConfig(dir=str(folder), name="../evil")

    authorized = tmp_path / "authorized"
    authorized.mkdir()
    shutil.copy(folder / "laptop.key", authorized)
    robot = FakeRobot(clock)
    server = serve(
        closing,
        robot,
        clock,
        server_secret_file=folder / "server.key_secret",
        authorized_clients_dir=authorized,
    )
    client = connect(
        closing,
        server,
        clock,
        client_secret_file=folder / "laptop.key_secret",
        server_public_file=folder / "server.key",
    )
    assert client.call("ping") == "pong"
    client.reset(seed=3)
    client.act(np.array([0.1, 0, 0, 0, 0], np.float32))
    assert robot.resets == 1 and len(robot.actions) == 1


# ------------------------------------------------------------------ a robot outside the box
@pytest.mark.parametrize("action", [STILL, np.array([-1.0, 1.0, -1.0, 0, 0], np.float32)])
def test_outside_the_box_the_step_limit_still_bounds_the_command(action):
    from s2policy.robot.safety import SafetyFilter

    cfg = SafetyConfig(max_step_m=0.02)
    safety = SafetyFilter(cfg, SPEC)
    state = np.array([0.40, 0.0, 0.1, 0.0, 0.04])  # 15 cm past the box's +x wall
    for _ in range(20):
        safe, events = safety.filter(action, state)
        step = safe[:3] * SPEC["max_step_m"]
        assert np.linalg.norm(step) <= cfg.max_step_m + 1e-7, step  # never a 15 cm jump
        state[:3] += step
    assert (state[:3] <= np.asarray(cfg.workspace_high) + 1e-7).all()  # back in the box
    assert (state[:3] >= np.asarray(cfg.workspace_low) - 1e-7).all()


# ------------------------------------------------------------------ any frame
def test_the_server_survives_any_frame_and_its_watchdog_still_holds_the_robot(clock, closing):
    from s2policy.robot.remote import MAX_REQUEST_BYTES, pack, unpack

    robot = FakeRobot(clock)
    server = serve(closing, robot, clock, lease_timeout_s=1.0)
    client = connect(closing, server, clock)
    client.reset(seed=1)  # the client holds the lease ...
    client.act(np.array([0.1, 0, 0, 0, 0], np.float32))
    ctx = zmq.Context.instance()

    def raw(kind):
        sock = ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, 2000)
        sock.connect(server.endpoint)
        return sock

    req = raw(zmq.REQ)  # a multipart request: it killed the REP server's thread before
    req.send_multipart([pack({"op": "ping"}), b"more"])
    reply = unpack(req.recv())
    assert reply["ok"] is False and "one frame expected, got 2" in reply["error"]
    req.send(b"\xc1 not msgpack")  # undecodable
    assert "not a msgpack map" in unpack(req.recv())["error"]
    req.send(pack([1, 2, 3]))  # msgpack, but not a map
    assert "a map expected" in unpack(req.recv())["error"]
    req.close()
    dealer = raw(zmq.DEALER)  # no envelope delimiter, many frames
    dealer.send_multipart([b"x"] * 20)
    dealer.send(b"")
    big = raw(zmq.REQ)  # over the size limit: its sender is dropped, no reply
    big.send(b"\0" * (MAX_REQUEST_BYTES + 1))
    with pytest.raises(zmq.Again):
        big.recv()
    dealer.close(), big.close()
    assert client.call("ping") == "pong"  # still serving the well-behaved client
    assert server.events["bad_frame"] >= 3

    # ... and vanishes: the watchdog, not a request, holds the robot after the lease timeout
    clock.t += 1.5
    assert wait_until(lambda: robot.holds == 1), "the watchdog did not hold the robot"
    assert server.lease is None and server.events["lease_expired"] == 1
    assert server._thread.is_alive() and server._watchdog.is_alive()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_the_watchdog_holds_the_robot_even_when_the_request_loop_has_died(clock, closing):
    robot = FakeRobot(clock)
    server = serve(closing, robot, clock, lease_timeout_s=1.0)
    client = connect(closing, server, clock)
    client.reset(seed=1)

    def die(sock):
        raise SystemExit  # what no `except Exception` catches: the request loop's thread ends

    server._serve_one = die
    with pytest.raises(ConnectionError):
        RemoteRobot(server.endpoint, 300, clock=clock).call("ping")
    server._thread.join(timeout=5)
    assert not server._thread.is_alive() and server._watchdog.is_alive()
    clock.t += 1.5
    assert wait_until(lambda: robot.holds == 1), "no watchdog outside the request loop"


def test_a_robot_whose_state_is_not_a_position_gets_no_workspace_box(caplog):
    """Joint angles read as a position would make the box move the arm on its own."""
    from s2policy.robot.safety import SafetyFilter

    spec = {**SPEC, "state_names": [f"joint{i}" for i in range(7)] + ["gripper"]}
    with caplog.at_level(logging.WARNING, logger="s2policy.robot.safety"):
        safety = SafetyFilter(SafetyConfig(max_step_m=0.02), spec)
    assert "holds no end-effector position" in caplog.text
    state = np.zeros(8)  # z = 0 lies below the box's floor: no motion may come of it
    safe, events = safety.filter(STILL, state)
    np.testing.assert_array_equal(safe, STILL)
    assert events == []
    safe, events = safety.filter(np.array([1.0, 0, 0, 0, 0], np.float32), state)
    assert "max_step" in events and safe[0] * SPEC["max_step_m"] <= 0.02 + 1e-7
    named = SafetyFilter(SafetyConfig(), {**spec, "ee_position": [3, 4, 5]})  # told where it is
    safe, events = named.filter(STILL, np.array([0, 0, 0, 0.40, 0, 0.1, 0, 0]))
    assert "workspace" in events and safe[0] < 0  # back toward the box, from x = 0.40
