"""Closed-loop evaluation driven by policies whose outcome is known: the task's scripted expert
(succeeds on every seed, episodes of different lengths) and a runner that never moves (fails on
every seed). Outcomes, final object poses and the observations each episode starts from must not
depend on reruns, on ``n_envs`` or on which slot plays an episode."""

import numpy as np
import pytest

from s2policy.evaluation.config import EvalConfig
from s2policy.evaluation.rollout import Rollouts
from s2policy.policies.runner import ActionRunner
from s2policy.task import TaskConfig

TASK = TaskConfig(env={"image_size": (32, 32), "shadow_size": 0})
SEEDS = [500, 501, 502, 503, 504, 505]


class ExpertRunner(ActionRunner):
    """The task's scripted expert as a runner: one expert per environment, reset with each
    episode's seed, acting on the observation merged with the privileged state that
    :class:`Rollouts` passes (``n_obs_steps = n_action_steps = 1``). Records every reset mask,
    every active mask and the first observation of each episode."""

    def __init__(self, task: TaskConfig, n_envs: int):
        self.env = task.make_env()  # gives the experts the task's action scaling
        super().__init__(n_envs, 1, 1, self.env.action_space.shape[0])
        self.experts = [self.env.unwrapped.expert(self.env) for _ in range(n_envs)]
        self.reset_masks: list[list[bool]] = []
        self.active_masks: list[list[bool]] = []
        self.firsts: list[tuple[int, dict[str, np.ndarray]]] = []  # (seed, first observation)

    def reset(self, seeds, mask=None):
        super().reset(seeds, mask)
        mask = [True] * self.n_envs if mask is None else [bool(m) for m in mask]
        self.reset_masks.append(mask)
        for i in np.flatnonzero(mask):
            self.experts[i].reset(seed=seeds[i])

    def observe(self, i, obs):
        if not self.histories[i]:  # the episode's first observation
            self.firsts.append((self.seeds[i], {k: np.array(v) for k, v in obs.items()}))
        super().observe(i, obs)

    def act(self, observations, active=None):
        self.active_masks.append([bool(a) for a in active])
        return super().act(observations, active)

    def predict(self, histories, envs):
        return [
            self.experts[i].act(h[-1], h[-1])[None] for h, i in zip(histories, envs, strict=True)
        ]


class StillRunner(ExpertRunner):
    """Never moves (all-zero actions): no episode can succeed."""

    def predict(self, histories, envs):
        return [np.zeros((1, self.action_dim), np.float32) for _ in envs]


def play(runner: ActionRunner, seeds: list[int], out, **cfg) -> tuple[list[dict], list, dict]:
    """Run ``seeds`` through :class:`Rollouts` as ``evaluate`` does; returns the episode records,
    the records handed to ``on_episode`` (in the order they came) and each episode's final
    privileged state (object poses after its last step), by seed."""
    out.mkdir(parents=True, exist_ok=True)
    cfg = EvalConfig(
        seeds=seeds, n_envs=runner.n_envs, n_videos=0, device="cpu", output_dir=str(out), **cfg
    )
    rollouts = Rollouts(cfg, TASK, runner, out)
    seen, finals = [], {}

    def on_episode(record):
        seen.append(record)
        (slot,) = [
            i for i, s in enumerate(rollouts.slots) if s.index >= 0 and s.seed == record["seed"]
        ]
        finals[record["seed"]] = {k: np.array(v) for k, v in rollouts.privileged[slot].items()}

    rollouts.on_episode = on_episode
    try:
        episodes = rollouts.run(seeds)
    finally:
        runner.env.close()
    return episodes, seen, finals


def outcome(episodes):
    return [(e["seed"], e["success"], e["steps"]) for e in episodes]


def assert_same_poses(a: dict, b: dict):
    assert a.keys() == b.keys()
    for seed in a:
        assert a[seed].keys() == b[seed].keys() and "cube_pos" in a[seed]
        for key in a[seed]:
            np.testing.assert_array_equal(a[seed][key], b[seed][key], err_msg=f"{seed} {key}")


def test_expert_succeeds_everywhere_reproducibly_whatever_n_envs(tmp_path):
    runs = {}
    for name, n_envs in (("a", 2), ("b", 2), ("one", 1), ("three", 3)):
        episodes, seen, finals = play(ExpertRunner(TASK, n_envs), SEEDS, tmp_path / name)
        runs[name] = (outcome(episodes), finals)
        assert sorted(outcome(seen)) == sorted(outcome(episodes))  # one on_episode per record
    reference, poses = runs["a"]
    assert [seed for seed, _, _ in reference] == SEEDS
    assert all(success for _, success, _ in reference)  # 100 % within the task's step limit
    steps = [s for _, _, s in reference]
    assert max(steps) < TASK.max_episode_steps and len(set(steps)) > 1  # staggered episode ends
    for name, (other, other_poses) in runs.items():
        assert other == reference, name
        assert_same_poses(other_poses, poses)
    # The final poses are those of a success: the cube lifted (above its resting height).
    assert all(p["cube_pos"][2] > p["cube_half"] + 0.04 for p in poses.values())


def test_a_runner_that_never_moves_fails_every_episode(tmp_path):
    episodes, _, finals = play(StillRunner(TASK, 2), SEEDS[:2], tmp_path)
    assert outcome(episodes) == [(s, False, TASK.max_episode_steps) for s in SEEDS[:2]]
    assert all(p["cube_pos"][2] < p["cube_half"] + 0.005 for p in finals.values())  # on the table


T, F = True, False
STAGGERED = (
    [500, 501, 503],  # the expert needs 14, 12 and 15 steps
    None,
    [(500, T, 14), (501, T, 12), (503, T, 15)],
    # 501 ends at step 12: slot 1 alone is reset (503); 500 ends at 14: slot 0 idles (reset,
    # stepped) until 503 ends at 27.
    [[T, T], [F, T], [T, F], [F, T]],
)
IDLE_TRUNCATED = (
    [500, 502, 503],
    13,
    [(500, F, 13), (502, F, 13), (503, F, 13)],
    # Both first episodes are truncated at step 13: slot 0 gets 503, slot 1 idles from the same
    # reset, so the idle slot is truncated at step 26 together with 503's episode.
    [[T, T], [T, T], [T, T]],
)


@pytest.mark.parametrize(
    "seeds, max_episode_steps, expected, resets", [STAGGERED, IDLE_TRUNCATED], ids=["ends", "idle"]
)
def test_staggered_resets_start_from_the_seeds_reset_and_idle_slots_stay_silent(
    tmp_path, seeds, max_episode_steps, expected, resets
):
    """3 episodes on 2 environments, ending at different steps (or together), so slots are
    reset while others play on and a slot idles (stepped, reset, truncated) while the other
    plays the last episode: every episode starts from what a fresh environment gives for its
    seed, and the idle slot never produces a record."""
    runner = ExpertRunner(TASK, 2)
    kw = {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}
    episodes, seen, _ = play(runner, seeds, tmp_path, **kw)
    assert outcome(episodes) == expected
    assert sorted(outcome(seen)) == sorted(expected)  # one record each; the idle slot: none
    # The paths under test ran: these resets, and steps with one slot idle beside an active one.
    assert runner.reset_masks == resets
    assert [T, F] in runner.active_masks or [F, T] in runner.active_masks
    # Each episode starts from exactly what a fresh environment gives for its seed.
    assert sorted(seed for seed, _ in runner.firsts) == seeds
    fresh = TASK.make_env()
    try:
        for seed, first in runner.firsts:
            obs, info = fresh.reset(seed=int(seed))
            expected_first = {**obs, **{k: v for k, v in info.items() if k != "success"}}
            assert first.keys() == expected_first.keys()
            for key, value in expected_first.items():
                np.testing.assert_array_equal(first[key], value, err_msg=f"seed {seed} {key}")
    finally:
        fresh.close()
