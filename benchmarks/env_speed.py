"""Environment speed: physics steps/s, and control steps/s without and with rendering.

    python benchmarks/env_speed.py            # full run
    python benchmarks/env_speed.py --quick    # a few seconds

Each row is measured in this run on this machine; the ratio column compares with the state-only
control step, so the cost of rendering reads directly.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

import envs


def physics_steps_per_s(seconds: float) -> float:
    import mujoco

    env = envs.make("cube_pick", cameras=())
    env.reset(seed=0)
    model, data = env.unwrapped.model, env.unwrapped.data
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(500):
            mujoco.mj_step(model, data)
        n += 500
    return n / (time.perf_counter() - start)


def control_steps_per_s(seconds: float, **env_kwargs) -> float:
    env = envs.make("cube_pick", **env_kwargs)
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    env.step(env.action_space.sample())  # create the renderer outside the timing
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        _, _, terminated, truncated, _ = env.step(rng.uniform(-1, 1, env.action_space.shape))
        n += 1
        if terminated or truncated:
            env.reset(seed=n)
    rate = n / (time.perf_counter() - start)
    env.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short timings (CI smoke)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 224])
    parser.add_argument("--shadow-sizes", type=int, nargs="+", default=[0, 512, 1024])
    args = parser.parse_args()
    seconds = 0.5 if args.quick else 3.0

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"MUJOCO_GL={os.environ.get('MUJOCO_GL')}, dtype: float64 physics"
    )
    physics = physics_steps_per_s(seconds)
    base = control_steps_per_s(seconds, cameras=())
    substeps = envs.make("cube_pick", cameras=()).unwrapped.n_substeps
    rows = [
        ("physics (mj_step)", "-", "-", physics, None),
        (f"control step ({substeps} mj_step), state only", "-", "-", base, 1.0),
    ]
    for size in args.sizes:
        for shadow in args.shadow_sizes:
            rate = control_steps_per_s(
                seconds, image_size=(size, size), cameras=("front", "wrist"), shadow_size=shadow
            )
            rows.append(
                ("control step + front & wrist render", f"{size}x{size}", shadow, rate, rate / base)
            )
    print(f"{'what':44s} {'image':>9s} {'shadow':>7s} {'steps/s':>10s} {'vs state-only':>14s}")
    for what, image, shadow, rate, ratio in rows:
        ratio_s = "" if ratio is None else f"{ratio:.3f}x"
        print(f"{what:44s} {image:>9s} {str(shadow):>7s} {rate:10.1f} {ratio_s:>14s}")


if __name__ == "__main__":
    main()
