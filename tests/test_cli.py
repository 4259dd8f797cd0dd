"""The command lines: every console script resolves to a callable, the hydra commands run with
``key=value`` arguments as console scripts, and misspelt keys fail with a message naming them."""

import importlib
import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from s2policy import cli
from s2policy.configs import CONFIG_DIR

tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def test_config_dir_is_the_repositorys():
    assert CONFIG_DIR == ROOT / "configs" and (CONFIG_DIR / "report.yaml").is_file()


def test_every_console_script_resolves_to_a_callable():
    expected = {"collect", "cache", "train", "eval", "report", "probe", "robot", "robomimic"}
    assert {f"s2policy-{name}" for name in expected | {"pretrain"}} <= set(SCRIPTS)
    for name, target in SCRIPTS.items():
        module, _, attr = target.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), name


@pytest.mark.parametrize(
    ("script", "function"),
    [
        ("collect_demos.py", cli.collect_main),
        ("cache_features.py", cli.cache_main),
        ("train_policy.py", cli.train_main),
        ("eval_rollouts.py", cli.eval_main),
        ("pretrain_mae.py", cli.pretrain_main),
    ],
)
def test_top_level_scripts_are_shims_of_the_console_scripts(script, function):
    assert runpy.run_path(str(ROOT / script), run_name="shim")["main"] is function
    assert f"s2policy.cli:{function.__name__}" in SCRIPTS.values()


def _console(name: str, *args, cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / name
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-c", _entry_code(name)]
    return subprocess.run([*cmd, *map(str, args)], cwd=cwd, capture_output=True, text=True)


def _entry_code(name: str) -> str:
    module, _, attr = SCRIPTS[name].partition(":")
    return f"import sys; sys.argv[0] = {name!r}; from {module} import {attr}; {attr}()"


def _result(task: str, backbone: str, successes: int) -> dict:
    return {
        "task": task,
        "encoder": {"backbone": backbone, "scales": [64], "weights": None, "params": 1e5,
                    "gflops_per_image": 0.06},
        "policy": "mlp",
        "successes": successes,
        "n_episodes": 10,
        "success_rate": successes / 10,
        "latency": {},
    }  # fmt: skip


def test_report_console_script_runs_and_leaves_no_hydra_output(tmp_path):
    for task, backbone, wins in [("place", "vit_micro", 4), ("push", "none", 1)]:
        path = tmp_path / "multirun" / task / f"{backbone}_mlp_seed0" / "eval" / "results.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(_result(task, backbone, wins)))
    proc = _console(
        "s2policy-report", "runs=[multirun]", "tasks=[push,place]", "out=rep", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "### Summary across tasks" in proc.stdout and "blind (state only)" in proc.stdout
    assert (tmp_path / "rep" / "success_vs_gflops.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["multirun", "rep"]  # no outputs/, logs


@pytest.mark.parametrize(
    ("name", "args", "key"),
    [
        ("s2policy-report", ["runs=[x]", "output=y"], "output"),
        ("s2policy-probe", ["dataset=x", "weigths=[random]"], "weigths"),
        ("s2policy-robomimic", ["action=export", "src=a", "dst=b", "valid=0.2"], "valid"),
        ("s2policy-eval", ["checkpoint=x", "n_episode=3"], "n_episode"),
    ],
)
def test_console_scripts_name_a_misspelt_key(tmp_path, name, args, key):
    proc = _console(name, *args, cwd=tmp_path)
    assert proc.returncode == 1
    assert f"Key '{key}' not in" in proc.stderr, proc.stderr[-3000:]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "name", ["s2policy-report", "s2policy-probe", "s2policy-robomimic", "s2policy-viz"]
)
def test_help_shows_the_usage_and_the_keys(name, capsys):
    module, _, attr = SCRIPTS[name].partition(":")
    with pytest.raises(SystemExit) as exit:
        getattr(importlib.import_module(module), attr)(["--help"])
    out = capsys.readouterr().out
    assert exit.value.code == 0 and out.startswith(f"{name}: ") and "Usage:" in out


@pytest.mark.parametrize(
    ("main", "args", "group"),
    [
        (cli.train_main, ["policy=mlp_schema"], "policy"),
        (cli.train_main, ["train=train_schema"], "train"),
    ],
)
def test_a_schema_is_not_a_config_choice(main, args, group, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([*args, f"dataset={tmp_path}/none.zarr", f"hydra.run.dir={tmp_path}/h"])
    err = capsys.readouterr().err
    assert f"names the schema of configs/{group}/, not a config; choose one of" in err


def test_task_and_encoder_schemas_are_not_selectable(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.collect_main(
            ["task=task_schema", f"output={tmp_path}/x.zarr", f"hydra.run.dir={tmp_path}/h"]
        )
    assert "Could not find 'task/task_schema'" in capsys.readouterr().err
    assert not (tmp_path / "x.zarr").exists()  # nothing was collected
    with pytest.raises(SystemExit):
        cli.train_main(["encoder=encoder_schema", f"hydra.run.dir={tmp_path}/h"])
    assert "Could not find 'encoder/encoder_schema'" in capsys.readouterr().err


def test_eval_takes_the_readmes_encoder_and_task_overrides():
    from hydra import compose, initialize_config_dir

    from s2policy.configs import register_configs, to_object

    register_configs()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = to_object(compose("eval", ["checkpoint=x", "encoder=micro_s2", "task=cube_pick"]))
        plain = to_object(compose("eval", ["checkpoint=x"]))
    assert cfg.encoder.backbone == "vit_micro" and list(cfg.encoder.scales) == [64, 128]
    assert cfg.task.name == "cube_pick"
    assert plain.encoder is None and plain.task is None


def test_bad_input_on_the_command_line_is_one_sentence(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        cli.train_main(["train.lr=-1", f"hydra.run.dir={tmp_path}/h"])
    err = capsys.readouterr().err
    assert exit.value.code == 2
    assert err.startswith("error: train.lr must be > 0") and "Traceback" not in err
    assert err.count("\n") == 1


def test_a_refused_resume_leaves_the_run_directory_and_its_hydra_record_unchanged(
    demo_store, tmp_path, capsys
):
    """hydra's own .hydra/ record would be rewritten before the run's checks; train_policy.py
    writes it only once training starts."""
    import hashlib

    run = tmp_path / "run"
    args = [
        f"dataset={demo_store}", "encoder=blind", "task.env.image_size=[32,32]",
        "task.env.shadow_size=0", "train.steps=4", "train.log_every=2", "train.val_every=2",
        "train.ckpt_every=2", "train.device=cpu", "policy.horizon=8", "policy.n_action_steps=4",
        "policy.hidden_dims=[16]", f"hydra.run.dir={run}",
    ]  # fmt: skip
    cli.train_main(args)
    record = sorted(p.name for p in (run / ".hydra").iterdir())
    assert record == ["config.yaml", "hydra.yaml", "overrides.yaml"]
    assert "policy.hidden_dims=[16]" in (run / ".hydra/overrides.yaml").read_text()
    assert "hidden_dims:\n  - 16" in (run / ".hydra/config.yaml").read_text()

    def digest() -> str:
        h = hashlib.sha256()
        for p in sorted(run.rglob("*")):
            if p.is_file():
                h.update(str(p.relative_to(run)).encode() + p.read_bytes())
        return h.hexdigest()

    before = digest()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit:
        cli.train_main([*args[:-2], "policy.hidden_dims=[32]", f"hydra.run.dir={run}",
                        "train.resume=true"])  # fmt: skip
    assert exit.value.code == 2
    assert "cannot resume" in capsys.readouterr().err
    assert digest() == before  # .hydra/ included
