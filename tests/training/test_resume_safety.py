"""Resuming and loading checkpoints that a crash or an edit left behind: the loader's recovery,
config checks on resume, metrics without repeated steps, and one sentence per damaged file."""

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from s2policy.encoders.s2 import EncoderConfig
from s2policy.policies.artifact import load, training_state
from s2policy.policies.mlp import MLPPolicyConfig
from s2policy.training.loop import train

ROOT = Path(__file__).resolve().parents[2]


def small_mlp(**kw):
    return MLPPolicyConfig(**{"horizon": 8, "n_action_steps": 4, "hidden_dims": [32], **kw})


def steps_logged(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoint" / "model.safetensors"))


def test_resume_after_a_kill_in_the_checkpoint_swap(demo_store, tmp_path, run_config):
    """Killed between moving checkpoint/ aside and moving checkpoint.new/ in, in a real process
    (named crash point); the resume continues from checkpoint.new, not from step 0, and ends
    with the weights of an uninterrupted run; metrics.jsonl repeats no step."""
    full = run_config(demo_store, tmp_path / "full", small_mlp(), steps=30, ckpt_every=10)
    train(full)
    cut = run_config(demo_store, tmp_path / "cut", small_mlp(), steps=30, ckpt_every=10)
    code = (
        "import sys, pickle; from s2policy.training.loop import train; "
        "train(pickle.loads(sys.stdin.buffer.read()))"
    )
    env = {**os.environ, "S2POLICY_CRASH_AT": "swap:checkpoint"}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        input=pickle.dumps(cut),
        env=env,
        cwd=ROOT,
        capture_output=True,
    )
    assert proc.returncode == 137, proc.stderr.decode()[-2000:]
    run = tmp_path / "cut"
    # the first checkpoint has no predecessor, so the crash hit the second one (step 20)
    assert not (run / "checkpoint").exists() and (run / "checkpoint.new").is_dir()
    assert (run / "checkpoint.old").is_dir()
    assert load(run).step == 20  # the loader reads checkpoint.new in place
    cut.train.resume = True
    train(cut)
    assert load(run).step == 30
    for key, value in weights(tmp_path / "full").items():
        torch.testing.assert_close(weights(run)[key], value, rtol=0, atol=0, msg=key)
    logged = steps_logged(run)
    assert logged == sorted(set(logged)) and logged[-1] == 30


def test_loader_falls_back_to_the_old_checkpoint(demo_store, tmp_path, run_config):
    train(run_config(demo_store, tmp_path, small_mlp(), steps=10))
    (tmp_path / "checkpoint").rename(tmp_path / "checkpoint.old")  # killed before new existed
    assert load(tmp_path).path.name == "checkpoint.old"
    cfg = run_config(demo_store, tmp_path, small_mlp(), steps=20, resume=True)
    train(cfg)
    assert load(tmp_path).step == 20 and not (tmp_path / "checkpoint.old").exists()


def test_resume_repeats_no_logged_step(demo_store, tmp_path, run_config):
    class Interrupt(Exception):
        pass

    def stop_at_25(record):
        if record["step"] == 25:
            raise Interrupt

    cfg = run_config(demo_store, tmp_path, small_mlp(), steps=40, ckpt_every=20, log_every=5)
    with pytest.raises(Interrupt):
        train(cfg, on_log=stop_at_25)
    assert steps_logged(tmp_path)[-1] == 25  # logged past the checkpoint at 20
    cfg.train.resume = True
    train(cfg)
    assert steps_logged(tmp_path) == [5, 10, 15, 20, 25, 30, 35, 40]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"encoder": EncoderConfig(backbone="vit_nano", scales=(32, 64), init_seed=1)},
         "encoder.init_seed: 0 -> 1"),
        ({"policy": small_mlp(hidden_dims=[48])}, "policy.hidden_dims: [32] -> [48]"),
        ({"train": {"lr": 5e-4}}, "train.lr: 0.001 -> 0.0005"),
    ],
)  # fmt: skip
def test_resume_with_another_config_is_refused(demo_store, tmp_path, run_config, change, named):
    train(run_config(demo_store, tmp_path, small_mlp(), steps=10))
    before = weights(tmp_path)
    cfg = run_config(demo_store, tmp_path, small_mlp(), steps=20, resume=True)
    for key, value in change.items():
        if key == "train":
            for k, v in value.items():
                setattr(cfg.train, k, v)
        else:
            setattr(cfg, key, value)
    with pytest.raises(ValueError, match=r"cannot resume .*" + named.replace("[", r"\[")
                       .replace("]", r"\]") + r".*new run directory"):  # fmt: skip
        train(cfg)
    for key, value in before.items():  # nothing was overwritten
        torch.testing.assert_close(weights(tmp_path)[key], value, rtol=0, atol=0)


def test_resume_with_a_longer_run_is_allowed(demo_store, tmp_path, run_config):
    train(run_config(demo_store, tmp_path, small_mlp(), steps=10))
    train(run_config(demo_store, tmp_path, small_mlp(), steps=20, resume=True, log_every=5))
    assert load(tmp_path).step == 20


@pytest.fixture
def ckpt_copy(demo_store, tmp_path_factory, run_config):
    src = tmp_path_factory.mktemp("src")
    train(run_config(demo_store, src, small_mlp(), steps=10))

    def copy(dst: Path) -> Path:
        shutil.copytree(src, dst)
        return dst / "checkpoint"

    return copy


def test_truncated_weights_get_one_sentence(ckpt_copy, tmp_path):
    ckpt = ckpt_copy(tmp_path / "run")
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model.safetensors is not a readable safetensors file"):
        load(ckpt)


def test_edited_policy_json_gets_one_sentence(ckpt_copy, tmp_path):
    ckpt = ckpt_copy(tmp_path / "run")
    info = json.loads((ckpt / "policy.json").read_text())
    info["policy"]["hidden_dims"] = [64]  # consistent, valid config; the weights do not fit it
    (ckpt / "policy.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"does not fit the policy described by .*policy.json"):
        load(ckpt)


class Payload:
    """Unpickling this would run code (the class must be imported): never loaded."""


def test_training_state_that_is_not_plain_tensors_is_refused(ckpt_copy, tmp_path):
    ckpt = ckpt_copy(tmp_path / "run")
    torch.save({"step": 3, "payload": Payload()}, ckpt / "training_state.pt")
    with pytest.raises(ValueError, match="not a plain tensor file") as err:
        training_state(ckpt)
    assert "weights_only=False" not in str(err.value)


def test_a_run_with_a_checkpoint_is_not_overwritten_without_asking(
    demo_store, tmp_path, run_config
):
    train(run_config(demo_store, tmp_path, small_mlp(), steps=10))
    before = weights(tmp_path)
    logged = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(
        FileExistsError,
        match=r"already holds a trained run \(checkpoint\); "
        r"continue it with train.resume=true, replace it with train.overwrite",
    ):
        train(run_config(demo_store, tmp_path, small_mlp(), steps=10))
    assert (tmp_path / "metrics.jsonl").read_text() == logged
    for key, value in before.items():
        torch.testing.assert_close(weights(tmp_path)[key], value, rtol=0, atol=0)
    train(run_config(demo_store, tmp_path, small_mlp(), steps=12, overwrite=True))
    assert load(tmp_path).step == 12


def test_resume_with_generator_states_of_another_device_is_one_sentence(
    demo_store, tmp_path, run_config
):
    train(run_config(demo_store, tmp_path, small_mlp(), steps=10))
    state_file = tmp_path / "checkpoint" / "training_state.pt"
    state = torch.load(state_file, weights_only=True)
    state["noise_rng"] = torch.zeros(16, dtype=torch.uint8)  # the size of a CUDA generator's
    torch.save(state, state_file)
    with pytest.raises(ValueError, match="generator 'noise_rng' was saved on another kind of"):
        train(run_config(demo_store, tmp_path, small_mlp(), steps=20, resume=True))


def test_resume_after_the_store_grew_is_refused(tmp_path, run_config):
    from s2policy.data.collect import CollectConfig, collect_demos
    from s2policy.task import TaskConfig

    task = TaskConfig(env={"image_size": (32, 32), "shadow_size": 0})
    store = tmp_path / "grow.zarr"
    collect_demos(CollectConfig(task=task, n_episodes=4, output=str(store)))
    run = tmp_path / "run"
    train(run_config(store, run, small_mlp(), steps=10))
    collect_demos(CollectConfig(task=task, n_episodes=5, output=str(store)))  # appends one
    with pytest.raises(ValueError, match=r"cannot resume .*the dataset's episodes: 4 -> 5"):
        train(run_config(store, run, small_mlp(), steps=20, resume=True))
