"""Scripted-expert success rate over consecutive seeds, with a Wilson 95 % interval.

python benchmarks/expert_success.py --task cube_pick --seeds 100 --noise 0 0.1 0.3
python benchmarks/expert_success.py --task stack --randomization heldout
python benchmarks/expert_success.py --quick     # 5 seeds at noise 0 and 0.3 (CI smoke)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import yaml

import envs
from s2policy.data.collect import run_episode
from s2policy.evaluation.stats import success_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="cube_pick", choices=sorted(envs.TASKS))
    parser.add_argument("--seeds", type=int, default=100, help="seeds 0 .. N-1")
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.1, 0.3])
    parser.add_argument("--randomization", default="off", help="configs/randomization/<name>")
    parser.add_argument("--quick", action="store_true", help="5 seeds, noise 0 and 0.3")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.noise = 5, [0.0, 0.3]
    presets = Path(__file__).resolve().parents[1] / "configs" / "randomization"
    settings = yaml.safe_load((presets / f"{args.randomization}.yaml").read_text())
    env = envs.make(args.task, cameras=(), randomization=settings)
    print(
        f"task {args.task}, seeds 0..{args.seeds - 1}, state-only rollouts, "
        f"randomization {args.randomization}"
    )
    print(f"{'expert noise':>12s}  {'success [95% CI] (n)':32s} {'mean steps':>10s} {'s':>6s}")
    for noise in args.noise:
        expert = env.unwrapped.expert(env, noise=noise)
        start, wins, steps = time.perf_counter(), 0, 0
        for seed in range(args.seeds):
            data, success = run_episode(env, expert, seed)
            wins += success
            steps += len(data["action"])
        rate = success_rate(wins, args.seeds)
        print(
            f"{noise:12.2f}  {str(rate):32s} {steps / args.seeds:10.1f} "
            f"{time.perf_counter() - start:6.1f}"
        )


if __name__ == "__main__":
    main()
