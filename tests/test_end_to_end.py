"""The user's path through the command lines, on a tiny config: collect -> cache -> train ->
evaluate (a sweep over a blind baseline and an S² encoder) -> report."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args):
    proc = subprocess.run(
        [sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_collect_cache_train_eval_report(tmp_path):
    store = tmp_path / "cube_pick.zarr"
    env = ["task.env.image_size=[32,32]", "task.env.shadow_size=0"]
    run("collect_demos.py", f"output={store}", "n_episodes=4", *env, f"hydra.run.dir={tmp_path}/c")
    out = run(
        "cache_features.py",
        f"dataset={store}",
        "encoder=nano_s2",
        "device=cpu",
        f"hydra.run.dir={tmp_path}/k",
    )
    assert "complete=True" in out
    sweep = tmp_path / "sweep"
    out = run(
        "train_policy.py",
        "-m",
        f"dataset={store}",
        *env,
        "encoder=blind,nano_s2",
        "train.steps=30",
        "train.device=cpu",
        "train.log_every=10",
        "policy.hidden_dims=[32]",
        "policy.horizon=8",
        "policy.n_action_steps=4",
        "eval.enabled=true",
        "eval.n_episodes=3",
        "eval.n_envs=3",
        "eval.n_videos=1",
        "task.max_episode_steps=10",
        f"hydra.sweep.dir={sweep}",
    )
    assert sum(line.startswith("success ") for line in out.splitlines()) == 2
    results = sorted(sweep.glob("*/eval/results.json"))
    assert [p.parent.parent.name for p in results] == ["blind_mlp_seed0", "nano_s2_mlp_seed0"]
    assert all(json.loads(p.read_text())["n_episodes"] == 3 for p in results)
    assert len(list(sweep.glob("*/eval/*.mp4"))) == 2
    out = run(
        "eval_rollouts.py",
        f"checkpoint={sweep}/nano_s2_mlp_seed0",
        "encoder=nano_s2",  # the README's form: assert what it was trained with
        "task=cube_pick",
        "n_episodes=2",
        "n_videos=0",
        "device=cpu",
        f"output_dir={tmp_path}/eval2",
    )
    assert "(" in out and "/2 episodes)" in out
    out = run("-m", "s2policy.evaluation.report", f"runs=[{sweep}]", f"out={tmp_path / 'report'}")
    assert "blind (state only)" in out and "vit_nano | (32, 64)" in out
    assert (tmp_path / "report" / "success_vs_gflops.png").is_file()


@pytest.mark.slow
def test_multi_task_sweep_heldout_eval_and_report(tmp_path):
    env = ["task.env.image_size=[32,32]", "task.env.shadow_size=0"]
    stores = tmp_path / "data"
    run(
        "collect_demos.py",
        "-m",
        "task=place,push",
        "n_episodes=3",
        *env,
        f"output={stores}/${{task.name}}.zarr",
        f"hydra.sweep.dir={tmp_path}/c",
    )
    assert sorted(p.name for p in stores.iterdir()) == ["place.zarr", "push.zarr"]
    multirun = tmp_path / "multirun"
    out = run(
        "train_policy.py",
        "-m",
        "task=place,push",
        "encoder=blind,nano_s2",
        f"dataset={stores}/${{task.name}}.zarr",
        *env,
        "train.steps=20",
        "train.device=cpu",
        "policy.hidden_dims=[32]",
        "policy.horizon=8",
        "policy.n_action_steps=4",
        "eval.enabled=true",
        "eval.n_episodes=2",
        "eval.n_envs=2",
        "eval.n_videos=0",
        "task.max_episode_steps=8",
        f"hydra.sweep.dir={multirun}/${{task.name}}",
    )
    assert sum(line.startswith("success ") for line in out.splitlines()) == 4
    for task in ("place", "push"):
        results = sorted((multirun / task).glob("*/eval/results.json"))
        assert [json.loads(p.read_text())["task"] for p in results] == [task, task]
    out = run(
        "eval_rollouts.py",
        f"checkpoint={multirun}/push/nano_s2_mlp_seed0",
        "randomization=heldout",
        "n_episodes=2",
        "n_videos=0",
        "device=cpu",
        "max_episode_steps=8",
        f"output_dir={multirun}/push/nano_s2_mlp_seed0/eval_heldout",
    )
    heldout = json.loads(
        (multirun / "push/nano_s2_mlp_seed0/eval_heldout/results.json").read_text()
    )
    assert heldout["randomization"] == "heldout" and heldout["trained_randomization"] == "off"
    report = tmp_path / "report"
    out = run(
        "-m",
        "s2policy.evaluation.report",
        f"runs=[{multirun}]",
        "tasks=[place,push]",
        f"out={report}",
    )
    assert "### Summary across tasks" in out and "### place" in out and "### push" in out
    assert "heldout (demos: off)" in out
    assert (report / "summary.csv").is_file()
