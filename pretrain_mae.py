"""MAE pretraining of a registry ViT on demonstration (+ random-rollout) frames.

python pretrain_mae.py backbone=vit_micro img_size=64 scales=[64,128] steps=3000
python pretrain_mae.py backbone=vit_s img_size=224 scales=[224,448] device=cuda batch_size=256
python train_policy.py encoder=micro_s2 encoder.weights=mae_vit_micro    # use the weights
"""

from s2policy.cli import pretrain_main as main

if __name__ == "__main__":
    main()
