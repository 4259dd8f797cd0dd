"""Build, list, verify or remove frozen-encoder feature caches of a demonstration store.

python cache_features.py dataset=datasets/cube_pick.zarr encoder=micro_s2
python cache_features.py action=list dataset=datasets/cube_pick.zarr
torchrun --nproc_per_node=2 cache_features.py encoder=vit_b_s2 encoder.weights=hub
"""

from s2policy.cli import cache_main as main

if __name__ == "__main__":
    main()
