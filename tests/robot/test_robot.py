import time

import numpy as np
import pytest
import zmq

from s2policy.data.store import ReplayBuffer
from s2policy.policies.runner import ActionQueue, ActionRunner, ensemble_weights
from s2policy.robot.log import RobotLog, events_from_mask
from s2policy.robot.loop import InferenceLoop, LoopConfig, summarize
from s2policy.robot.remote import RemoteRobot, RobotServer, pack, unpack
from s2policy.robot.safety import SafetyConfig, SafetyFilter
from s2policy.robot.worker import SimulatedLatencyWorker, ThreadWorker

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


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t

    def sleep(self, dt):
        self.t += max(0.0, dt)


class FakeRobot:
    """Records what it is told; its observation timestamp follows the clock unless frozen."""

    def __init__(self, clock, freeze_after=None, fail_act_at=None):
        self.clock, self.freeze_after, self.fail_act_at = clock, freeze_after, fail_act_at
        self.actions, self.holds, self.n_obs = [], 0, 0
        self._stamp = None

    def spec(self):
        return SPEC

    def reset(self, seed=None):
        self.actions, self.holds, self.n_obs = [], 0, 0

    def observe(self):
        if self.freeze_after is None or self.n_obs < self.freeze_after:
            self._stamp = self.clock()
        self.n_obs += 1
        return {
            "front": np.full((8, 8, 3), self.n_obs % 255, np.uint8),
            "state": np.array([0, 0, 0.1, 0, 0.04], np.float32),
            "timestamp": self._stamp,
        }

    def act(self, action):
        if self.fail_act_at is not None and len(self.actions) == self.fail_act_at:
            raise RuntimeError("motor fault")
        self.actions.append(np.asarray(action))

    def hold(self):
        self.holds += 1

    def status(self):
        return {"success": None, "done": False}

    def close(self):
        pass


def constant_infer(value=0.1, k=4):
    def infer(history):
        return np.tile(np.array([value, 0, 0, 0, 1.0], np.float32), (k, 1)), {
            "encoder_ms": 1.0,
            "policy_ms": 2.0,
        }

    return infer


def chunk_runner(infer_when_remaining=2, ensemble_decay=None, k=4):
    """The runner's episode state (history, queue) for a fake chunk inference of ``k`` actions."""
    return ActionRunner(1, 2, k, 5, ensemble_decay, infer_when_remaining)


def make_loop(robot, clock, latency_s, ticks=20, log=None, infer=None, runner=None, **kw):
    worker = SimulatedLatencyWorker(infer or constant_infer(), clock, latency_s)
    cfg = LoopConfig(hz=10, max_ticks=ticks, **kw)
    return InferenceLoop(
        worker,
        robot,
        cfg,
        runner or chunk_runner(),
        SafetyFilter(SafetyConfig(), SPEC),
        log,
        clock=clock,
        sleep=clock.sleep,
    )


# ------------------------------------------------------------------ scheduling
def test_latency_compensation_skips_past_actions():
    s = ActionQueue()
    chunk = np.arange(4)[:, None] * np.ones((4, 2))
    assert s.add(first_tick=10, actions=chunk, now_tick=12) == 2  # arrived 2 ticks late
    np.testing.assert_array_equal(s.action(12), chunk[2])
    np.testing.assert_array_equal(s.action(13), chunk[3])
    assert s.action(14) is None and s.remaining(12) == 2
    assert s.add(first_tick=0, actions=chunk, now_tick=12) == 4  # entirely past: dropped
    assert len(s.chunks) == 1


def test_newest_chunk_wins_without_ensembling():
    s = ActionQueue()
    s.add(0, np.zeros((6, 1)), 0)
    s.add(2, np.ones((6, 1)), 2)
    assert s.action(1)[0] == 0 and s.action(3)[0] == 1


def test_temporal_ensembling_weights():
    w = ensemble_weights(3, 0.5)
    np.testing.assert_allclose(w, np.exp(-0.5 * np.arange(3)) / np.exp(-0.5 * np.arange(3)).sum())
    assert w[0] > w[1] > w[2]  # ACT: the oldest prediction weighs most
    np.testing.assert_allclose(ensemble_weights(4, 0.0), 0.25)
    s = ActionQueue(ensemble_decay=0.5)
    s.add(0, np.full((4, 1), 0.0), 0)
    s.add(1, np.full((4, 1), 1.0), 1)
    s.add(2, np.full((4, 1), 2.0), 2)
    assert s.action(2)[0] == pytest.approx(w @ np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError):
        ActionQueue(ensemble_decay=-1)


# ------------------------------------------------------------------ safety
MID = np.array([0.0, 0.0, 0.1, 0.0, 0.04])  # an end effector well inside the workspace


@pytest.fixture
def safety():
    return SafetyFilter(SafetyConfig(max_step_m=0.02, max_yaw_step_rad=0.1, gripper_max=0.5), SPEC)


def test_safe_action_passes_unchanged(safety):
    out, events = safety.filter(np.array([0.1, -0.2, 0.3, 0.1, 0.2]), MID)
    assert events == [] and np.allclose(out, [0.1, -0.2, 0.3, 0.1, 0.2])


def test_nonfinite_action_means_hold(safety):
    assert safety.filter(np.array([np.nan, 0, 0, 0, 0]), np.zeros(5)) == (None, ["nonfinite"])
    assert safety.filter(np.array([0, 0, np.inf, 0, 0]), np.zeros(5))[0] is None


def test_max_step_scales_the_translation(safety):
    out, events = safety.filter(np.array([1.0, 1.0, 0, 0, 0]), MID)
    assert events == ["max_step"]
    assert np.linalg.norm(out[:3] * 0.03) == pytest.approx(0.02)
    assert out[0] == pytest.approx(out[1])  # direction kept


def test_workspace_bounds(safety):
    state = np.array([0.245, 0.0, 0.01, 0, 0.04])
    out, events = safety.filter(np.array([0.5, 0, -0.5, 0, 0]), state)
    assert "workspace" in events
    target = state[:3] + out[:3] * 0.03
    assert target[0] == pytest.approx(0.25) and target[2] == pytest.approx(0.005)


def test_yaw_and_gripper_limits(safety):
    out, events = safety.filter(np.array([0, 0, 0, 1.0, 1.0]), MID)
    assert set(events) == {"max_yaw_step", "gripper"}
    assert out[3] * 0.25 == pytest.approx(0.1) and out[4] == pytest.approx(0.5)


def test_bad_safety_config():
    with pytest.raises(ValueError):
        SafetyConfig(max_step_m=0)
    with pytest.raises(ValueError):
        SafetyConfig(gripper_min=0.5, gripper_max=0.5)


# ------------------------------------------------------------------ loop and watchdog
def test_chunks_execute_at_the_fixed_rate_with_fast_inference():
    clock = FakeClock()
    robot = FakeRobot(clock)
    report = make_loop(robot, clock, latency_s=0.05).run_episode()
    assert report.ticks == 20 and not report.events
    assert report.held_ticks == 1  # only the first tick, before any chunk exists
    assert len(robot.actions) == 19 and robot.holds == 2  # + the final hold
    assert max(abs(e) for e in report.period_error_ms) < 1e-6


def test_slow_inference_starves_and_holds():
    clock = FakeClock()
    robot = FakeRobot(clock)
    # 4 actions per chunk, a new chunk requested with 2 left, but inference takes 0.45 s
    report = make_loop(robot, clock, latency_s=0.45).run_episode()
    assert report.events["starved"] > 0 and report.held_ticks > report.events["starved"] - 1
    assert report.skipped_actions > 0  # late chunks lose their past actions
    assert all(np.isfinite(a).all() for a in robot.actions)


def test_stale_observation_holds():
    clock = FakeClock()
    robot = FakeRobot(clock, freeze_after=5)  # the camera stops updating after 5 reads
    report = make_loop(robot, clock, latency_s=0.05).run_episode()
    assert report.events["stale_obs"] >= 20 - 5 - 4  # older than 0.3 s from tick ~8 on
    assert len(robot.actions) < 8


def test_exceptions_end_in_hold():
    clock = FakeClock()
    robot = FakeRobot(clock, fail_act_at=3)
    with pytest.raises(RuntimeError, match="motor fault"):
        make_loop(robot, clock, latency_s=0.05).run_episode()
    assert robot.holds >= 1

    def broken(history):
        raise ValueError("policy blew up")

    robot = FakeRobot(clock)
    with pytest.raises(ValueError, match="policy blew up"):
        make_loop(robot, clock, latency_s=0.0, infer=broken).run_episode()
    assert robot.holds == 1


def test_ctrl_c_ends_in_hold():
    clock = FakeClock()
    robot = FakeRobot(clock)
    loop = make_loop(robot, clock, latency_s=0.05)

    def interrupt(dt):
        raise KeyboardInterrupt

    loop.sleep = interrupt
    with pytest.raises(KeyboardInterrupt):
        loop.run_episode()
    assert robot.holds == 2  # the first tick (no chunk yet) and the final hold


def test_thread_worker_runs_in_background_and_reraises():
    worker = ThreadWorker(constant_infer(), time.monotonic)
    worker.submit([{}], tick=3)
    worker.wait(30)  # bounded: a hung inference fails the test instead of hanging it
    assert not worker.busy
    (result,) = worker.poll()
    assert result.tick == 3 and result.actions.shape == (4, 5) and result.latency_s >= 0

    def broken(history):
        raise ValueError("boom")

    worker = ThreadWorker(broken, time.monotonic)
    worker.submit([{}], tick=0)
    worker.close()
    with pytest.raises(ValueError, match="boom"):
        worker.poll()


def test_logs_are_a_replay_buffer(tmp_path):
    clock = FakeClock()
    robot = FakeRobot(clock, freeze_after=8)
    log = RobotLog(tmp_path / "run.zarr", attrs={"cameras": ["front"], "control_hz": 10})
    loop = make_loop(robot, clock, latency_s=0.05, ticks=12, log=log)
    reports = [loop.run_episode(seed=1), loop.run_episode(seed=2)]
    buf = ReplayBuffer.open(tmp_path / "run.zarr")
    assert buf.n_episodes == 2 and buf.n_steps == 24
    assert {
        "front",
        "state",
        "action",
        "policy_action",
        "held",
        "safety_events",
        "timestamp",
        "tick_time",
        "obs_age_s",
        "inference_latency_ms",
    } <= set(buf.keys())
    ep = buf.get_episode(0)
    assert ep["held"][0] == 1 and ep["inference_latency_ms"][0] == -1
    assert "stale_obs" in events_from_mask(int(ep["safety_events"][-1]))
    np.testing.assert_array_equal(buf.get_meta("episode_seeds"), [1, 2])
    summary = summarize(reports)
    assert summary["ticks"] == 24 and summary["inference_ms"]["p50"] == pytest.approx(50.0)
    assert summary["safety_events"]["stale_obs"] > 0


# ------------------------------------------------------------------ remote robots
#: The server binds a free port itself (no probe-then-bind race); clients use its ``endpoint``.
ANY_PORT = "tcp://127.0.0.1:*"
#: Generous reply timeout: a loaded CI machine may stall a thread for a few hundred ms, and only
#: the tests that stop the server on purpose ever wait it out.
TIMEOUT_MS = 1000


def restart_server(robot, endpoint, clock, deadline_s=10.0):
    """A new server on the same endpoint (the client is connected to it); retried while the
    port is still being released, within a deadline."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return RobotServer(robot, endpoint, clock=clock).start()
        except zmq.ZMQError as err:
            if err.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def call_within(client, op, deadline_s=10.0):
    """``client.call(op)``, retried on a timeout until a deadline (a reconnecting client)."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return client.call(op)
        except ConnectionError:
            if time.monotonic() > deadline:
                raise


def test_message_encoding_round_trips_arrays():
    msg = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.uint8(3), "c": [1, "x"]}
    back = unpack(pack(msg))
    np.testing.assert_array_equal(back["a"], msg["a"])
    assert back["a"].dtype == np.float32 and back["b"] == 3 and back["c"] == [1, "x"]


def test_remote_round_trip_and_dropped_connection():
    clock = FakeClock()
    robot = FakeRobot(clock)
    server = RobotServer(robot, ANY_PORT, clock=clock).start()
    address = server.endpoint
    assert address.startswith("tcp://127.0.0.1:") and not address.endswith(":*")
    client = RemoteRobot(address, timeout_ms=TIMEOUT_MS, clock=clock)
    try:
        assert client.spec() == SPEC
        client.reset(seed=4)
        clock.t += 0.05
        obs = client.observe()
        assert obs["front"].shape == (8, 8, 3) and obs["front"].dtype == np.uint8
        assert obs["timestamp"] == pytest.approx(clock.t)  # age carried, not the server's time
        client.act(np.array([0.1, 0, 0, 0, 1], np.float32))
        client.hold()
        assert len(robot.actions) == 1 and robot.holds == 1
        assert client.status() == {"success": None, "done": False}
        with pytest.raises(RuntimeError, match="unknown op 'dance'"):
            client.call("dance")
        server.stop()
        start = time.monotonic()
        with pytest.raises(
            ConnectionError, match=f"did not answer 'observe' within {TIMEOUT_MS} ms"
        ):
            client.observe()
        waited = time.monotonic() - start
        assert 0.9 * TIMEOUT_MS / 1e3 <= waited < 30  # it waited the timeout, and no longer hung
        server = restart_server(robot, address, clock)  # the robot side comes back
        assert call_within(client, "ping") == "pong"  # the client reconnects by itself
        assert len(robot.actions) == 1 and robot.holds == 1  # nothing replayed on reconnect
    finally:
        server.stop()
        client.close()


def test_loop_over_a_remote_robot_holds_when_the_link_drops():
    clock = FakeClock()
    robot = FakeRobot(clock)
    server = RobotServer(robot, ANY_PORT, clock=clock).start()
    client = RemoteRobot(server.endpoint, timeout_ms=TIMEOUT_MS, clock=clock)
    loop = make_loop(client, clock, latency_s=0.05, ticks=50)
    real_sleep = loop.sleep

    def sleep_and_drop(dt):
        real_sleep(dt)
        if len(robot.actions) == 5:
            server.stop()

    loop.sleep = sleep_and_drop
    try:
        with pytest.raises(ConnectionError):
            loop.run_episode()
        # Every action up to the drop arrived, none after it (counts, not timings).
        assert len(robot.actions) == 5
    finally:
        server.stop()
        client.close()


def test_a_chunk_that_is_ready_serves_the_current_tick():
    clock = FakeClock()
    robot = FakeRobot(clock)
    # zero latency, new chunk only when the last is used up: every action comes from its chunk's
    # first position onwards and nothing is held or skipped (what evaluation does)
    report = make_loop(robot, clock, latency_s=0.0, runner=chunk_runner(0)).run_episode()
    assert report.held_ticks == 0 and report.skipped_actions == 0 and len(robot.actions) == 20
    with pytest.raises(ValueError, match="sync_wait_s"):
        LoopConfig(hz=10, sync_wait_s=0.2)


def test_sync_wait_lets_a_fast_thread_inference_serve_the_current_tick():
    """Real threads; the wait (0.9 s) is many thousand times what the instant inference needs,
    so that even a loaded machine serves the first tick."""
    robot = FakeRobot(time.monotonic)
    cfg = LoopConfig(hz=1, max_ticks=2, sync_wait_s=0.9)
    loop = InferenceLoop(
        ThreadWorker(constant_infer(), time.monotonic),
        robot,
        cfg,
        chunk_runner(0),
        SafetyFilter(SafetyConfig(), SPEC),
    )
    report = loop.run_episode()
    assert report.held_ticks == 0 and report.skipped_actions == 0 and len(robot.actions) == 2


def test_a_chunk_of_the_previous_episode_is_never_executed():
    """The episode ends while an inference is pending (latency 1.5 ticks, a request at the last
    tick): the next episode must start clean, so two episodes from the same state act alike."""
    clock = FakeClock()
    robot = FakeRobot(clock)
    loop = make_loop(robot, clock, latency_s=0.15, ticks=7)
    first = loop.run_episode()
    first_actions = [a.copy() for a in robot.actions]
    assert loop.worker.busy  # a chunk was still on its way when the episode ended
    second = loop.run_episode()
    assert (second.held_ticks, second.skipped_actions) == (first.held_ticks, first.skipped_actions)
    assert len(robot.actions) == len(first_actions)
    for a, b in zip(robot.actions, first_actions, strict=True):
        np.testing.assert_array_equal(a, b)
    worker = SimulatedLatencyWorker(constant_infer(), clock, 1.0)
    worker.submit([], 0)
    worker.drain()
    clock.sleep(2.0)
    assert worker.poll() == [] and not worker.busy
