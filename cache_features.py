"""Build, list, verify or remove frozen-encoder feature caches of a demonstration store.

python cache_features.py dataset=datasets/cube_pick.zarr encoder=micro_s2
python cache_features.py action=list dataset=datasets/cube_pick.zarr
torchrun --nproc_per_node=2 cache_features.py encoder=vit_b_s2 encoder.weights=hub
"""

import logging

import hydra
from omegaconf import DictConfig
from tqdm import tqdm

from s2policy.configs import register_configs, to_object
from s2policy.features.command import run_cache_command
from s2policy.runtime import shutdown_distributed

register_configs()


@hydra.main(version_base="1.3", config_path="configs", config_name="cache")
def main(dict_cfg: DictConfig) -> None:
    cfg = to_object(dict_cfg)
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


if __name__ == "__main__":
    main()
