"""Collect scripted-expert demonstrations into datasets/<task>.zarr.

python collect_demos.py task=cube_pick n_episodes=50 task.env.image_size=[128,128]
"""

from s2policy.cli import collect_main as main

if __name__ == "__main__":
    main()
