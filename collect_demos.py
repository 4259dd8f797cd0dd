"""Collect scripted-expert demonstrations into datasets/<task>.zarr.

python collect_demos.py task=cube_pick n_episodes=50 task.env.image_size=[128,128]
"""

import hydra
from omegaconf import DictConfig
from tqdm import tqdm

import envs  # noqa: F401  (chooses the headless GL backend before mujoco is imported)
from s2policy.configs import register_configs, to_object
from s2policy.data.collect import collect_demos

register_configs()


@hydra.main(version_base="1.3", config_path="configs", config_name="collect")
def main(dict_cfg: DictConfig) -> None:
    cfg = to_object(dict_cfg)
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


if __name__ == "__main__":
    main()
