import numpy as np
import pytest

from s2policy.data.sampler import episode_windows, split_episodes


def test_windows_pad_by_repeating_episode_edges():
    ends = np.array([5, 8])  # episodes [0..4] and [5..7]
    win = episode_windows(ends, np.array([0, 1]), horizon=4, pad_before=1, pad_after=2)
    first = win[win[:, 1] <= 4]  # windows of episode 0
    np.testing.assert_array_equal(first[0], [0, 0, 1, 2])  # starts one step before: repeats 0
    np.testing.assert_array_equal(first[-1], [3, 4, 4, 4])  # ends two steps after: repeats 4
    assert len(first) == 5 - 4 + 1 + 2 + 1
    second = win[win[:, 1] >= 5]
    np.testing.assert_array_equal(second[0], [5, 5, 6, 7])
    np.testing.assert_array_equal(second[-1], [6, 7, 7, 7])
    assert not np.any((win[:, :1] <= 4) & (win[:, -1:] >= 5))  # no window crosses episodes


def test_every_step_is_the_current_step_of_a_window():
    ends = np.array([3, 10, 12])
    n_obs = 2
    win = episode_windows(ends, np.arange(3), horizon=8, pad_before=n_obs - 1, pad_after=3)
    current = win[:, n_obs - 1]
    assert set(current.tolist()) == set(range(12))


def test_short_episode_and_no_padding():
    win = episode_windows(np.array([2]), np.array([0]), horizon=5, pad_before=0, pad_after=0)
    np.testing.assert_array_equal(win, [[0, 1, 1, 1, 1]])
    win = episode_windows(np.array([6]), np.array([0]), horizon=3, pad_before=0, pad_after=0)
    np.testing.assert_array_equal(win[:, 0], [0, 1, 2, 3])


def test_split_by_episode():
    train, val = split_episodes(10, 0.2, seed=0)
    assert len(val) == 2 and len(train) == 8 and not set(train) & set(val)
    assert np.array_equal(split_episodes(10, 0.2, seed=0)[1], val)
    assert len(split_episodes(1, 0.5, seed=0)[0]) == 1  # never an empty training split
    with pytest.raises(ValueError, match="val_ratio"):
        split_episodes(10, 1.0, 0)
