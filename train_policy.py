"""Train a policy on cached S² features (the cache is built first when missing), and with
``eval.enabled=true`` evaluate it in its task right after.

    python train_policy.py task=cube_pick encoder=micro_s2 policy=mlp train=cpu
    python train_policy.py encoder=vit_b_s2 encoder.weights=hub policy=diffusion train=gpu
    python train_policy.py ... train.resume=true          # continue outputs/<task>/<run>
    torchrun --nproc_per_node=2 train_policy.py ...        # DDP
    python train_policy.py -m encoder=blind,micro,micro_s2 train.seed=0,1,2 eval.enabled=true
"""

import logging

import hydra
from omegaconf import DictConfig
from tqdm import tqdm

import envs  # noqa: F401  (chooses the headless GL backend before mujoco is imported)
from s2policy.configs import register_configs, to_object
from s2policy.experiment import run_experiment
from s2policy.runtime import shutdown_distributed

register_configs()


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(dict_cfg: DictConfig) -> None:
    cfg = to_object(dict_cfg)
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
        checkpoint, results = run_experiment(cfg, on_log, on_episode)
    finally:
        for bar in bars.values():
            bar.close()
        shutdown_distributed()
    print(f"checkpoint: {checkpoint}")
    if results is not None:
        lo, hi = results["ci95"]
        print(
            f"success {100 * results['success_rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] "
            f"({results['successes']}/{results['n_episodes']})"
        )


if __name__ == "__main__":
    main()
