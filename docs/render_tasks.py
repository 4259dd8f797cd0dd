"""Render the README's task pictures: the front camera at the start of seed 0 and at the end of
the scripted expert's episode, side by side (``docs/tasks/<task>.png``).

python docs/render_tasks.py [--size 160] [--out docs/tasks]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

import envs  # noqa: F401  (chooses the OpenGL backend before mujoco loads)


def render_task(task: str, size: int, seed: int = 0) -> np.ndarray:
    env = envs.make(task, image_size=(size, size), cameras=("front",), shadow_size=1024)
    obs, info = env.reset(seed=seed)
    first = obs["front"]
    expert = env.unwrapped.expert(env)
    expert.reset(seed=seed)
    while True:
        obs, _, terminated, truncated, info = env.step(expert.act(obs, info))
        if terminated or truncated:
            break
    env.close()
    gap = np.full((size, 4, 3), 255, np.uint8)
    return np.concatenate([first, gap, obs["front"]], axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--out", default="docs/tasks")
    parser.add_argument("--tasks", nargs="+", default=list(envs.TASKS))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for task in args.tasks:
        path = out / f"{task}.png"
        Image.fromarray(render_task(task, args.size)).save(path, optimize=True)
        print(path, path.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
