"""Evaluate a checkpoint with seeded MuJoCo rollouts and the live S² encoder.

python eval_rollouts.py checkpoint=outputs/cube_pick/micro_s2_mlp_seed0 n_episodes=50
python eval_rollouts.py checkpoint=... seeds=[3,5,8] n_videos=3 n_envs=8
"""

import hydra
from omegaconf import DictConfig
from tqdm import tqdm

import envs  # noqa: F401  (chooses the headless GL backend before mujoco is imported)
from s2policy.configs import register_configs, to_object
from s2policy.evaluation.rollout import evaluate

register_configs()


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def main(dict_cfg: DictConfig) -> None:
    cfg = to_object(dict_cfg)
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


if __name__ == "__main__":
    main()
