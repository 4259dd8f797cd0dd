"""Evaluate a checkpoint with seeded MuJoCo rollouts and the live S² encoder.

python eval_rollouts.py checkpoint=outputs/cube_pick/micro_s2_mlp_seed0 n_episodes=50
python eval_rollouts.py checkpoint=... seeds=[3,5,8] n_videos=3 n_envs=8
"""

from s2policy.cli import eval_main as main

if __name__ == "__main__":
    main()
