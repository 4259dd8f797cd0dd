"""MAE pretraining of a registry ViT on demonstration (+ random-rollout) frames.

python pretrain_mae.py backbone=vit_micro img_size=64 scales=[64,128] steps=3000
python pretrain_mae.py backbone=vit_s img_size=224 scales=[224,448] device=cuda batch_size=256
python train_policy.py encoder=micro_s2 encoder.weights=mae_vit_micro    # use the weights
"""

import logging

import hydra
from omegaconf import DictConfig
from tqdm import tqdm

import envs  # noqa: F401  (headless GL backend before mujoco is imported)
from s2policy.configs import register_configs, to_object
from s2policy.pretraining.train import pretrain

register_configs()


@hydra.main(version_base="1.3", config_path="configs", config_name="pretrain")
def main(dict_cfg: DictConfig) -> None:
    cfg = to_object(dict_cfg)
    logging.getLogger("s2policy").setLevel(logging.INFO)
    with tqdm(total=cfg.steps, desc=f"MAE {cfg.backbone}", unit="step") as bar:

        def on_log(record: dict) -> None:
            bar.n = record["step"]
            bar.set_postfix(
                loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_s']:.0f}", refresh=True
            )

        path = pretrain(cfg, on_log)
    print(f"weights: {path} (use encoder.weights={cfg.name}); curves: {cfg.output_dir}")


if __name__ == "__main__":
    main()
