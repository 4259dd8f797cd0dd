"""Entry points of the hydra commands (console scripts ``s2policy-*``; the top-level scripts
``collect_demos.py`` & co. call them). Each runs ``configs/<name>.yaml`` through
:func:`s2policy.configs.run_hydra`, so ``key=value`` overrides, ``-m`` sweeps and ``--help`` work
the same everywhere; ``argv`` replaces the command line for in-process calls.

    s2policy-collect task=cube_pick n_episodes=50          # python collect_demos.py ...
    s2policy-cache dataset=datasets/cube_pick.zarr encoder=micro_s2
    s2policy-train -m encoder=blind,micro,micro_s2 eval.enabled=true
    s2policy-eval checkpoint=outputs/cube_pick/micro_s2_mlp_seed0
    s2policy-pretrain backbone=vit_micro img_size=64 scales=[64,128]
    s2policy-report runs=[multirun/cube_pick]              # s2policy.evaluation.report
    s2policy-probe encoders=[micro,micro_s2]               # s2policy.evaluation.probe
    s2policy-approx sources=[micro_s2] target=midi weights=mae4  # s2policy.evaluation.approx
    s2policy-robomimic action=import src=... dst=...       # s2policy.data.formats.robomimic
    s2policy-robot checkpoint=... robot=sim                # s2policy.robot.run
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from tqdm import tqdm

from s2policy.configs import run_hydra
from s2policy.hydra_app import write_hydra_record


def _collect(cfg) -> None:
    from s2policy.data.collect import collect_demos

    counts = {"attempts": 0, "kept": 0}
    with tqdm(total=cfg.n_episodes, desc=f"collect {cfg.task.name}", unit="ep") as bar:

        def on_episode(result):
            counts["attempts"] += 1
            counts["kept"] += result.kept
            bar.set_postfix(
                seed=result.seed, kept=f"{counts['kept']}/{counts['attempts']}", refresh=False
            )
            bar.update(int(result.kept))

        buffer = collect_demos(cfg, on_episode=on_episode)
        bar.n = buffer.n_episodes
        bar.refresh()
    print(
        f"{buffer.path}: {buffer.n_episodes} episodes, {buffer.n_steps} steps, keys {buffer.keys()}"
    )


def collect_main(argv: Sequence[str] | None = None) -> None:
    """Scripted-expert demonstrations into ``datasets/<task>.zarr`` (``configs/collect.yaml``)."""
    run_hydra("collect", "collect_demos", _collect, argv)


def _cache(cfg) -> None:
    from s2policy.features.command import run_cache_command
    from s2policy.runtime import shutdown_distributed

    logging.getLogger("s2policy").setLevel(logging.INFO)
    bars = []

    def on_chunk(done: int, total: int) -> None:
        if not bars:
            desc = f"cache {cfg.encoder.backbone} {list(cfg.encoder.scales)}"
            bars.append(tqdm(total=total, desc=desc, unit="chunk"))
        bars[0].n = done
        bars[0].refresh()

    try:
        lines = run_cache_command(cfg, on_chunk)
    finally:
        for bar in bars:
            bar.close()
        shutdown_distributed()
    for line in lines:
        print(line)


def cache_main(argv: Sequence[str] | None = None) -> None:
    """Build, list, verify or remove feature caches (``configs/cache.yaml``)."""
    run_hydra("cache", "cache_features", _cache, argv)


def _train(cfg) -> None:
    from s2policy.experiment import run_experiment
    from s2policy.runtime import shutdown_distributed

    logging.getLogger("s2policy").setLevel(logging.INFO)
    bars = {"train": tqdm(total=cfg.train.steps, desc=f"train {cfg.run_name}", unit="step")}
    wins = []

    def on_log(record: dict) -> None:
        bars["train"].n = record["step"]
        bars["train"].set_postfix(
            {k: f"{v:.4g}" for k, v in record.items() if k != "step"}, refresh=True
        )

    def on_episode(record: dict) -> None:
        if "eval" not in bars:
            bars["train"].close()
            bars["eval"] = tqdm(total=cfg.eval.n_episodes, desc=f"eval {cfg.run_name}", unit="ep")
        wins.append(record["success"])
        bars["eval"].set_postfix(success=f"{sum(wins)}/{len(wins)}", refresh=False)
        bars["eval"].update()

    try:
        # the run's .hydra/ record is written once training starts: a refused run (resume with
        # another config, a run directory that holds a checkpoint) leaves its directory as it was
        checkpoint, results = run_experiment(
            cfg, on_log, on_episode, lambda: write_hydra_record(cfg.output_dir, cfg.to_dict())
        )
    finally:
        for bar in bars.values():
            bar.close()
        shutdown_distributed()
    print(f"checkpoint: {checkpoint}")
    if results is not None and results.get("kind") == "offline":
        mse = results["offline"]["action_mse"]
        print(
            f"offline action MSE {mse['mean']:.4g} [{mse['ci95'][0]:.4g}, {mse['ci95'][1]:.4g}] "
            f"on {results['offline']['episodes']} held-out episodes (not a success rate)"
        )
    elif results is not None:
        lo, hi = results["ci95"]
        print(
            f"success {100 * results['success_rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] "
            f"({results['successes']}/{results['n_episodes']})"
        )


def train_main(argv: Sequence[str] | None = None) -> None:
    """Train a policy on cached features, optionally evaluating it (``configs/config.yaml``)."""
    run_hydra("config", "train_policy", _train, argv)


def _eval(cfg) -> None:
    from s2policy.evaluation.rollout import evaluate

    n = len(cfg.seed_list())
    wins = []
    with tqdm(total=n, desc="eval", unit="ep") as bar:

        def on_episode(record):
            wins.append(record["success"])
            bar.set_postfix(success=f"{sum(wins)}/{len(wins)}", refresh=False)
            bar.update()

        results = evaluate(cfg, on_episode)
    lo, hi = results["ci95"]
    print(
        f"success {100 * results['success_rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] "
        f"({results['successes']}/{results['n_episodes']} episodes) -> "
        f"{results['results_file']}"
    )


def eval_main(argv: Sequence[str] | None = None) -> None:
    """Seeded MuJoCo rollouts of a checkpoint (``configs/eval.yaml``)."""
    run_hydra("eval", "eval_rollouts", _eval, argv)


def _pretrain(cfg) -> None:
    from s2policy.pretraining.train import pretrain

    logging.getLogger("s2policy").setLevel(logging.INFO)
    with tqdm(total=cfg.steps, desc=f"MAE {cfg.backbone}", unit="step") as bar:
        shown: dict[str, str] = {}

        def on_log(record: dict) -> None:
            bar.n = record["step"]
            if "loss" in record:
                shown.update(loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_s']:.0f}")
            if "heldout_loss" in record:
                shown["heldout"] = f"{record['heldout_loss']:.4f}"
            bar.set_postfix(shown, refresh=True)

        path = pretrain(cfg, on_log)
    print(f"weights: {path} (use encoder.weights={cfg.name}); curves: {cfg.output_dir}")


def pretrain_main(argv: Sequence[str] | None = None) -> None:
    """MAE pretraining of a registry ViT on demonstration frames (``configs/pretrain.yaml``)."""
    run_hydra("pretrain", "pretrain_mae", _pretrain, argv)
