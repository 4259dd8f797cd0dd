"""Train a policy on cached S² features (the cache is built first when missing), and with
``eval.enabled=true`` evaluate it in its task right after.

    python train_policy.py task=cube_pick encoder=micro_s2 policy=mlp train=cpu
    python train_policy.py encoder=vit_b_s2 encoder.weights=hub policy=diffusion train=gpu
    python train_policy.py ... train.resume=true          # continue outputs/<task>/<run>
    torchrun --nproc_per_node=2 train_policy.py ...        # DDP
    python train_policy.py -m encoder=blind,micro,micro_s2 train.seed=0,1,2 eval.enabled=true
"""

from s2policy.cli import train_main as main

if __name__ == "__main__":
    main()
