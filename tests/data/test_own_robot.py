"""A lab's own robot, without a simulator: a dataset LeRobot wrote (an 8-dim state, a 4-dim action,
its own cameras) is imported, trained on without ``task=``, evaluated offline on held-out
episodes, refused by a simulated task and by a robot of another spec, and run on a robot of its
own spec over loopback."""

import json
import time

import numpy as np
import pytest

pytest.importorskip("pyarrow")
pytest.importorskip("av")

from s2policy import cli  # noqa: E402
from s2policy.data.formats.lerobot.convert import import_lerobot  # noqa: E402
from s2policy.evaluation.config import EvalConfig  # noqa: E402
from s2policy.evaluation.offline import OfflineConfig, evaluate_offline  # noqa: E402
from s2policy.evaluation.report import write_report  # noqa: E402
from s2policy.evaluation.rollout import evaluate  # noqa: E402
from s2policy.policies.artifact import load  # noqa: E402
from s2policy.robot.remote import RemoteRobot, RobotServer, SpecMismatch  # noqa: E402
from s2policy.robot.run import RobotRunConfig, run_robot  # noqa: E402
from s2policy.task import TaskConfig  # noqa: E402

SPEC = {  # what the lab's arm declares
    "cameras": ["top", "wrist"],
    "image_sizes": {"top": [64, 64], "wrist": [32, 32]},
    "state_dim": 8,
    "state_names": [f"joint{i}" for i in range(7)] + ["gripper"],
    "action_dim": 4,
    "action_names": ["dx", "dy", "dz", "grip"],
    "control_hz": 10.0,
    "max_step_m": 0.03,
    "max_yaw_step_rad": 0.25,
    "yaw_control": False,
}


class Arm:
    """A fake arm of the lab's spec (or of ``spec``)."""

    def __init__(self, spec=None):
        self._spec, self.actions, self.holds = dict(spec or SPEC), [], 0

    def spec(self):
        return self._spec

    def reset(self, seed=None):
        pass

    def observe(self):
        sizes = self._spec["image_sizes"]
        return {
            **{c: np.full((*sizes[c], 3), 100, np.uint8) for c in self._spec["cameras"]},
            "state": np.zeros(self._spec["state_dim"], np.float32),
            "timestamp": time.monotonic(),
        }

    def act(self, action):
        self.actions.append(np.asarray(action))

    def hold(self):
        self.holds += 1

    def status(self):
        return {"success": None, "done": False}

    def close(self):
        pass


@pytest.fixture(scope="module")
def own_run(lerobot_v30, tmp_path_factory):
    """The LeRobot dataset imported and trained on, as a lab would: no task=."""
    root = tmp_path_factory.mktemp("own")
    store = import_lerobot(lerobot_v30, root / "my_arm.zarr").path
    run = root / "run"
    cli.train_main([
        f"dataset={store}", "encoder=nano", "policy.cameras=[wrist]", "policy.horizon=8",
        "policy.n_action_steps=4", "policy.hidden_dims=[32]", "train.steps=30",
        "train.val_every=10", "train.log_every=10", "train.ckpt_every=30", "train.device=cpu",
        "train.val_ratio=0.34", "eval.enabled=true", f"hydra.run.dir={run}",
    ])  # fmt: skip
    return store, run


def test_a_dataset_defined_run_records_the_data_spec_and_evaluates_offline(own_run):
    store, run = own_run
    trained = load(run)
    assert trained.task is None  # no simulated task: the dataset defines the run
    spec = trained.spec
    assert spec.cameras == {"wrist": [32, 32]} and spec.sim_task is None
    assert (spec.state_dim, spec.action_dim) == (8, 4)
    assert spec.state_names[-1] == "gripper" and spec.action_names == ["dx", "dy", "dz", "grip"]
    assert spec.tasks == ["pick up the red block", "put it in the bin"]
    # eval.enabled=true ran the offline evaluation on the held-out episode
    results = json.loads((run / "eval_offline/results.json").read_text())
    assert results["kind"] == "offline" and results["held_out"]
    assert len(results["episodes_evaluated"]) == 1  # 34 % of 3 episodes held out
    off = results["offline"]
    assert off["episodes"] == 1 and len(off["action_mse"]["per_dim"]) == 4
    assert all(np.isnan(off["action_mse"]["ci95"]))  # one episode: no interval, not [0, nan]
    assert len(off["chunk_mse_by_step"]) == 8 - 2 + 1  # horizon from the current step
    assert (run / f"eval_offline/open_loop_episode{results['episodes_evaluated'][0]}.png").is_file()


def test_offline_evaluation_of_other_episodes_and_its_interval(own_run, tmp_path):
    store, run = own_run
    results = evaluate_offline(
        OfflineConfig(checkpoint=str(run), episodes=[0, 1, 2], output_dir=str(tmp_path / "off"))
    )
    off = results["offline"]
    assert off["episodes"] == 3 and not results["held_out"]  # two of them were trained on
    mean, low, high = off["action_mse"]["mean"], *off["action_mse"]["ci95"]
    assert low <= mean <= high and mean == pytest.approx(np.mean(off["episode_mse"]))
    md, _ = write_report([tmp_path / "off"], tmp_path / "report")
    assert "offline action error on recorded episodes" in md and "| nano" not in md
    assert "| my_arm | 3 | vit_nano | (32) | random |" in md


def test_a_simulated_task_and_a_robot_of_another_spec_are_refused(own_run, tmp_path):
    store, run = own_run
    with pytest.raises(ValueError, match="trained on a dataset of its own .*evaluate it offline"):
        evaluate(EvalConfig(checkpoint=str(run), n_episodes=1, output_dir=str(tmp_path / "e")))
    with pytest.raises(ValueError, match=r"does not fit task 'cube_pick', whose environment "
                       r"differs: image size wrist 96x96 instead of 32x32; state size 5 instead "
                       r"of 8; action size 5 instead of 4"):  # fmt: skip
        evaluate(EvalConfig(checkpoint=str(run), task=TaskConfig(), n_episodes=1))
    with pytest.raises(ValueError, match="there is no simulated robot for it; run it with robot"):
        run_robot(RobotRunConfig(checkpoint=str(run), robot="sim"))


def test_the_robot_loop_checks_the_spec_at_connect_over_loopback(own_run, tmp_path):
    store, run = own_run
    arm = Arm()
    server = RobotServer(arm, "tcp://127.0.0.1:*").start()
    try:
        cfg = RobotRunConfig(checkpoint=str(run), robot="remote", address=server.endpoint,
                             episodes=1, max_ticks=12, timeout_ms=3000, sync_wait_s=0.05,
                             log_dir=str(tmp_path / "logs"))  # fmt: skip
        summary = run_robot(cfg)
        assert summary["episodes"] == 1 and summary["ticks"] == 12
        assert arm.actions and all(a.shape == (4,) for a in arm.actions)
    finally:
        server.stop()
    wrong = Arm({**SPEC, "state_dim": 7, "state_names": None})  # a 7-dim arm
    server = RobotServer(wrong, "tcp://127.0.0.1:*").start()
    try:
        cfg = RobotRunConfig(checkpoint=str(run), robot="remote", address=server.endpoint,
                             episodes=1, max_ticks=5, timeout_ms=3000)  # fmt: skip
        refused = r"the robot does not match the checkpoint: state size 7 instead of 8 \(checkpoint"
        with pytest.raises(ValueError, match=refused):
            run_robot(cfg)
        # the handshake: a client that skips its own check is refused the lease by the server
        client = RemoteRobot(server.endpoint, 3000, policy_spec=load(run).spec)
        with pytest.raises(SpecMismatch, match="does not match the client's policy: state size 7"):
            client.reset()
        client.close()
        assert wrong.actions == [] and server.lease is None
    finally:
        server.stop()


def test_runs_are_grouped_by_the_stores_task_or_name(own_run, demo_store, tmp_path):
    """``outputs/<group>/<run>``: a simulated store's task, else the store's own name."""
    from s2policy.hydra_app import run_group

    store, _ = own_run
    assert run_group(str(store), "cube_pick") == "my_arm"  # no task= needed, none misnamed
    assert run_group(str(demo_store), "push") == "cube_pick"  # what the store records
    assert run_group(str(tmp_path / "none.zarr"), "place") == "place"  # nothing collected yet


def test_a_grown_store_keeps_the_training_split_and_gets_fresh_features(own_run, tmp_path):
    """Episodes appended after training must not turn trained episodes into "held out"."""
    import shutil

    from s2policy.data.store import ReplayBuffer

    store, run = own_run
    grown = tmp_path / "grown.zarr"
    shutil.copytree(store, grown)
    before = evaluate_offline(OfflineConfig(checkpoint=str(run), output_dir=str(tmp_path / "a")))
    with ReplayBuffer.open(grown, "a") as buf:
        for i in range(3):
            buf.add_episode(buf.get_episode(i), {k: buf.get_meta(k)[i] for k in buf.meta_keys()})
    trained = load(run)
    trained.provenance = type(trained.provenance)(
        str(grown), 3, trained.provenance.cache_fingerprint, trained.provenance.config
    )  # the run as if it had been trained on the store before it grew
    after = evaluate_offline(
        OfflineConfig(checkpoint=str(run), output_dir=str(tmp_path / "b")), trained
    )
    assert after["episodes_evaluated"] == before["episodes_evaluated"] and after["held_out"]
    assert after["offline"]["steps"] == before["offline"]["steps"]
