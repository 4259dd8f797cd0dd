"""Experiment tracking (``s2policy/tracking.py``): ``logger=tensorboard`` writes event files
whose scalars are the metrics records at their steps, the evaluation's success rate and videos;
``logger=wandb`` an offline run; ``logger=none`` nothing; a bad backend name or a missing
package is one sentence before anything trains."""

from __future__ import annotations

import json
import sys
import types
from dataclasses import replace
from pathlib import Path

import pytest

from s2policy import cli
from s2policy.encoders.s2 import EncoderConfig
from s2policy.evaluation.config import EvalConfig
from s2policy.evaluation.rollout import evaluate
from s2policy.experiment import run_experiment
from s2policy.policies.mlp import MLPPolicyConfig
from s2policy.pretraining.train import PretrainConfig, pretrain
from s2policy.tracking import LoggerConfig, Tracker, open_tracker
from s2policy.training.config import RunConfig

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

BLIND = EncoderConfig(backbone="none")
TENSORBOARD = LoggerConfig(backend="tensorboard")
EVAL = dict(enabled=True, n_episodes=2, n_envs=2, n_videos=1, max_episode_steps=8, device="cpu")


def small_mlp():
    return MLPPolicyConfig(horizon=8, n_action_steps=4, hidden_dims=[32], d_feature=16)


def blind_run(run_config, store, out, logger=TENSORBOARD, with_eval=False, **train) -> RunConfig:
    cfg = run_config(store, out, small_mlp(), encoder=BLIND, **train)
    cfg.logger = logger
    cfg.run_name = "blind_mlp_seed0"
    if with_eval:
        cfg.eval = EvalConfig(**EVAL)
    return cfg


def events(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def curve(acc: EventAccumulator, tag: str) -> dict[int, float]:
    return {e.step: e.value for e in acc.Scalars(tag)}


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tracked_run(demo_store, tmp_path_factory, run_config):
    """A blind run trained 40 steps and evaluated with ``logger=tensorboard``, and the records
    its ``on_log`` (the progress bar's callback) received."""
    out = tmp_path_factory.mktemp("tracked") / "run"
    seen = []
    cfg = blind_run(run_config, demo_store, out, with_eval=True)
    _, results = run_experiment(cfg, on_log=seen.append)
    return out, seen, results


def test_training_scalars_are_the_metrics_records_at_their_steps(tracked_run):
    out, seen, _ = tracked_run
    records = metrics(out)
    assert seen == records  # the progress bar's on_log still gets every record
    acc = events(out / "tensorboard")
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/samples_per_s", "val/loss"} <= tags
    assert sorted(curve(acc, "train/loss")) == [10, 20, 30, 40]
    assert sorted(curve(acc, "val/loss")) == [20, 40]
    for key, tag in [("train_loss", "train/loss"), ("lr", "train/lr"), ("val_loss", "val/loss")]:
        logged = curve(acc, tag)
        for r in records:
            if key in r:
                assert logged[r["step"]] == pytest.approx(r[key], rel=1e-6), (tag, r["step"])
    rates = curve(acc, "train/samples_per_s")
    assert all(v > 0 for v in rates.values()) and len(rates) == 4


def test_the_evaluation_success_rate_interval_and_video_are_logged(tracked_run):
    out, _, results = tracked_run
    acc = events(out / "tensorboard")
    assert curve(acc, "eval/success_rate") == {40: pytest.approx(results["success_rate"])}
    low, high = results["ci95"]
    assert curve(acc, "eval/ci95_low") == {40: pytest.approx(low)}
    assert curve(acc, "eval/ci95_high") == {40: pytest.approx(high)}
    assert curve(acc, "eval/n_episodes") == {40: 2.0}
    (video,) = [e["video"] for e in results["episodes"] if e.get("video")]
    (image,) = acc.Images(f"eval/{Path(video).stem}")
    assert image.step == 40 and image.encoded_image_string.startswith(b"GIF8")
    assert "config/text_summary" in acc.Tags()["tensors"]  # the run config, as text


def test_standalone_evaluation_logs_beside_the_training_curves(tracked_run, tmp_path):
    out, _, _ = tracked_run
    before = curve(events(out / "tensorboard"), "train/loss")
    cfg = EvalConfig(
        checkpoint=str(out),
        n_episodes=2,
        n_envs=2,
        n_videos=0,
        max_episode_steps=8,
        device="cpu",
        output_dir=str(tmp_path / "eval"),
        randomization={"name": "heldout", "light_scale": (0.4, 0.5)},
        logger=TENSORBOARD,
    )
    results = evaluate(cfg)
    acc = events(out / "tensorboard")
    assert curve(acc, "eval_heldout/success_rate") == {40: pytest.approx(results["success_rate"])}
    assert curve(acc, "train/loss") == before  # nothing of the training's curves purged


def test_pretraining_logs_loss_lr_and_images_per_s(demo_store, tmp_path):
    cfg = PretrainConfig(
        backbone="vit_nano",
        img_size=32,
        datasets=[str(demo_store)],
        decoder_dim=32,
        decoder_heads=2,
        steps=4,
        batch_size=8,
        warmup_steps=1,
        log_every=2,
        device="cpu",
        name="mae_tracked",
        weights_dir=str(tmp_path / "w"),
        output_dir=str(tmp_path / "run"),
        logger=TENSORBOARD,
    )
    pretrain(cfg)
    acc = events(tmp_path / "run" / "tensorboard")
    records = metrics(tmp_path / "run")
    assert curve(acc, "train/loss") == {r["step"]: pytest.approx(r["loss"]) for r in records}
    assert sorted(curve(acc, "train/lr")) == [2, 4]
    assert sorted(curve(acc, "train/images_per_s")) == [2, 4]


def test_a_replaced_run_starts_its_curves_over(demo_store, tmp_path, run_config):
    out = tmp_path / "run"
    run_experiment(blind_run(run_config, demo_store, out, steps=20))
    run_experiment(blind_run(run_config, demo_store, out, steps=20, lr=3e-3, overwrite=True))
    logged = events(out / "tensorboard").Scalars("train/loss")
    second = [(r["step"], pytest.approx(r["train_loss"])) for r in metrics(out)]
    assert [(e.step, e.value) for e in logged] == second  # the first run's events were purged


def test_logger_none_writes_nothing_besides_the_run(demo_store, tmp_path, run_config):
    out = tmp_path / "run"
    run_experiment(blind_run(run_config, demo_store, out, logger=LoggerConfig(), steps=10))
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "config.json", "metrics.jsonl"]
    assert type(open_tracker(TENSORBOARD, out, "r", "g", "train", rank=1)) is Tracker  # DDP


def test_a_sweep_gives_each_run_its_own_event_files(demo_store, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    cli.train_main(
        [
            "-m",
            f"dataset={demo_store}",
            "task.env.image_size=[32,32]",
            "task.env.shadow_size=0",
            "encoder=blind",
            "train.seed=0,1",
            "train.steps=4",
            "train.log_every=2",
            "train.val_every=2",
            "train.batch_size=16",
            "train.device=cpu",
            "policy.hidden_dims=[16]",
            "policy.horizon=8",
            "policy.n_action_steps=4",
            "logger=tensorboard",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    for seed in (0, 1):
        acc = events(sweep / f"blind_mlp_seed{seed}" / "tensorboard")
        assert sorted(curve(acc, "train/loss")) == [2, 4]
        config = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
        assert f'"seed": {seed}' in config and "blind_mlp_seed" in config
    assert "checkpoint:" in capsys.readouterr().out


def test_logger_dir_collects_the_runs_by_group_and_name(tmp_path):
    cfg = LoggerConfig(backend="tensorboard", dir=str(tmp_path / "tb"))
    for name in ("blind_mlp_seed0", "blind_mlp_seed1"):
        with open_tracker(cfg, tmp_path / name, name, "cube_pick", "train") as tracker:
            tracker.log_metrics({"step": 1, "train_loss": 1.0})
    assert sorted(p.name for p in (tmp_path / "tb" / "cube_pick").iterdir()) == [
        "blind_mlp_seed0",
        "blind_mlp_seed1",
    ]
    assert curve(events(tmp_path / "tb" / "cube_pick" / "blind_mlp_seed1"), "train/loss") == {1: 1}
    assert not (tmp_path / "blind_mlp_seed0").exists()


# ---------------------------------------------------------------------------------- W&B
class FakeRun:
    def __init__(self, **kwargs):
        self.init, self.logged, self.exit_code = kwargs, [], None

    def log(self, data, step):
        self.logged.append((step, data))

    def finish(self, exit_code=0):
        self.exit_code = exit_code


@pytest.fixture
def fake_wandb(monkeypatch):
    """A stand-in ``wandb`` module that records what the tracker asks of it."""
    module = types.ModuleType("wandb")
    module.runs = []

    def init(**kwargs):
        module.runs.append(FakeRun(**kwargs))
        return module.runs[-1]

    module.init = init
    module.Settings = lambda **kw: kw
    module.Video = lambda path, format: ("video", path, format)
    monkeypatch.setitem(sys.modules, "wandb", module)
    return module


def _results(tmp_path: Path) -> dict:
    (tmp_path / "episode_000_seed7.mp4").write_bytes(b"mp4")
    return {
        "results_file": str(tmp_path / "results.json"),
        "success_rate": 0.5,
        "ci95": [0.1, 0.9],
        "successes": 1,
        "n_episodes": 2,
        "randomization": "off",
        "trained_randomization": "off",
        "episodes": [{"seed": 7, "video": "episode_000_seed7.mp4"}, {"seed": 8}],
    }


def test_wandb_runs_offline_in_the_run_directory(fake_wandb, tmp_path):
    cfg = LoggerConfig(backend="wandb")
    tracker = open_tracker(cfg, tmp_path, "blind_mlp_seed0", "cube_pick", "train", {"a": (1,)})
    assert fake_wandb.runs == []  # started by the first record: a refused run leaves no files
    with tracker:
        on_log = tracker.chain(None)
        on_log({"step": 10, "train_loss": 0.5, "lr": 1e-3, "samples_per_s": 100.0})
        on_log({"step": 20, "train_loss": 0.25, "val_loss": 0.3, "lr": 5e-4})
        tracker.log_evaluation(_results(tmp_path), 20)
    (run,) = fake_wandb.runs
    assert run.init["mode"] == "offline" and run.init["dir"] == str(tmp_path)
    assert run.init["name"] == "blind_mlp_seed0" and run.init["group"] == "cube_pick"
    assert run.init["job_type"] == "train" and run.init["config"] == {"a": [1]}
    assert run.init["project"] == "s2policy"
    assert run.logged[0] == (10, {"train/loss": 0.5, "train/lr": 1e-3, "train/samples_per_s": 100})
    assert run.logged[1] == (20, {"train/loss": 0.25, "val/loss": 0.3, "train/lr": 5e-4})
    step, data = run.logged[2]
    assert step == 20 and data["eval/success_rate"] == 0.5 and data["eval/ci95_high"] == 0.9
    assert data["eval/episode_000_seed7"] == (
        "video",
        str(tmp_path / "episode_000_seed7.mp4"),
        "mp4",
    )
    assert run.exit_code == 0


def test_wandb_run_of_a_failed_training_is_marked_failed(fake_wandb, tmp_path):
    with pytest.raises(RuntimeError):
        with open_tracker(LoggerConfig(backend="wandb", name="x"), tmp_path, "r", "g", "t") as t:
            t.log_metrics({"step": 1, "loss": 1.0})
            raise RuntimeError("boom")
    assert fake_wandb.runs[0].exit_code == 1 and fake_wandb.runs[0].init["name"] == "x"


def test_wandb_offline_writes_its_run_directory(demo_store, tmp_path, run_config, monkeypatch):
    pytest.importorskip("wandb")
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    cfg = blind_run(run_config, demo_store, out, LoggerConfig(backend="wandb"), True, steps=20)
    run_experiment(cfg)
    (log,) = out.glob("wandb/offline-run-*/run-*.wandb")
    data = log.read_bytes()
    for key in (b"train/loss", b"train/lr", b"train/samples_per_s", b"val/loss"):
        assert key in data, key
    assert b"eval/success_rate" in data and b"blind_mlp_seed0" in data
    assert list(out.glob("wandb/offline-run-*/files/media/videos/eval/*.mp4"))


# ------------------------------------------------------------------------------ bad input
def test_an_unknown_backend_is_one_sentence(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"^unknown logger 'mlflow'; known: none, tensorboard, "):
        LoggerConfig(backend="mlflow")
    with pytest.raises(ValueError, match=r"^unknown logger.mode 'sync'; known: offline, online$"):
        LoggerConfig(backend="wandb", mode="sync")
    with pytest.raises(SystemExit) as exit:
        cli.train_main(["logger.backend=mlflow", f"hydra.run.dir={tmp_path}/h"])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.startswith("error: unknown logger 'mlflow'")
    assert err.count("\n") == 1
    with pytest.raises(SystemExit):
        cli.pretrain_main(["logger=mlflow", f"hydra.run.dir={tmp_path}/p"])
    err = capsys.readouterr().err
    assert "Could not find 'logger/mlflow'" in err and "tensorboard" in err


@pytest.mark.parametrize(
    ("backend", "modules"),
    [("wandb", ["wandb"]), ("tensorboard", ["tensorboard", "torch.utils.tensorboard"])],
)
def test_a_missing_package_is_one_sentence_before_training(
    backend, modules, demo_store, tmp_path, run_config, monkeypatch
):
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    out = tmp_path / "run"
    cfg = blind_run(run_config, demo_store, out, LoggerConfig(backend=backend))
    with pytest.raises(ValueError) as err:
        run_experiment(cfg)
    assert str(err.value) == (
        f"logger={backend} needs the {backend} package, which is not installed; install the "
        "tracking extra (pip install -e '.[tracking]') or use logger=none"
    )
    assert not out.exists()  # nothing trained
    with pytest.raises(ValueError, match="needs the"):
        pretrain(PretrainConfig(logger=LoggerConfig(backend=backend), output_dir=str(out)))


def test_resuming_may_change_the_logger(demo_store, tmp_path, run_config):
    out = tmp_path / "run"
    run_experiment(blind_run(run_config, demo_store, out, LoggerConfig(), steps=10))
    cfg = blind_run(run_config, demo_store, out, steps=20, resume=True)
    run_experiment(replace(cfg, logger=TENSORBOARD))
    assert sorted(curve(events(out / "tensorboard"), "train/loss")) == [20]
