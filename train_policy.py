"""Train a policy on cached S² features (the cache is built first when missing).

python train_policy.py task=cube_pick encoder=micro_s2 policy=mlp train=cpu
python train_policy.py encoder=vit_b_s2 encoder.weights=hub policy=diffusion train=gpu
python train_policy.py ... train.resume=true          # continue outputs/<task>/<run>
torchrun --nproc_per_node=2 train_policy.py ...        # DDP
"""

import logging

import hydra
from omegaconf import DictConfig
from tqdm import tqdm

from s2policy.configs import register_configs, to_object
from s2policy.runtime import shutdown_distributed
from s2policy.training.loop import train

register_configs()


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(dict_cfg: DictConfig) -> None:
    cfg = to_object(dict_cfg)
    logging.getLogger("s2policy").setLevel(logging.INFO)
    bar = tqdm(total=cfg.train.steps, desc=f"train {cfg.run_name}", unit="step")

    def on_log(record: dict) -> None:
        bar.n = record["step"]
        bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k != "step"}, refresh=True)

    try:
        checkpoint = train(cfg, on_log)
    finally:
        bar.close()
        shutdown_distributed()
    print(f"checkpoint: {checkpoint}")


if __name__ == "__main__":
    main()
