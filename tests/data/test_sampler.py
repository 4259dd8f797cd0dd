import numpy as np
import pytest

from s2policy.data.sampler import episode_windows, split_episodes


def test_windows_pad_by_repeating_episode_edges():
    ends = np.array([5, 8])  # episodes [0..4] and [5..7]
    win = episode_windows(ends, np.array([0, 1]), horizon=4, n_obs_steps=2)
    assert win.shape == (8, 4)
    np.testing.assert_array_equal(win[0], [0, 0, 1, 2])  # one step before the start: repeats 0
    np.testing.assert_array_equal(win[3], [2, 3, 4, 4])
    np.testing.assert_array_equal(win[4], [3, 4, 4, 4])  # past the end: repeats the last step
    np.testing.assert_array_equal(win[5], [5, 5, 6, 7])
    np.testing.assert_array_equal(win[7], [6, 7, 7, 7])
    episode_of = np.searchsorted(ends, win, side="right")
    assert (episode_of == episode_of[:, :1]).all()  # no window crosses episodes


def test_every_step_is_the_current_step_of_exactly_one_window():
    ends = np.array([3, 10, 12])
    n_obs = 3
    win = episode_windows(ends, np.arange(3), horizon=8, n_obs_steps=n_obs)
    np.testing.assert_array_equal(win[:, n_obs - 1], np.arange(12))
    np.testing.assert_array_equal(win[0, :n_obs], [0, 0, 0])


def test_selected_episodes_only_and_bad_sizes():
    win = episode_windows(np.array([2, 6]), np.array([1]), horizon=3, n_obs_steps=1)
    np.testing.assert_array_equal(win[:, 0], [2, 3, 4, 5])
    assert episode_windows(np.array([2]), np.array([], int), 3, 1).shape == (0, 3)
    with pytest.raises(ValueError, match="n_obs_steps <= horizon"):
        episode_windows(np.array([2]), np.array([0]), horizon=2, n_obs_steps=3)


def test_split_by_episode():
    train, val = split_episodes(10, 0.2, seed=0)
    assert len(val) == 2 and len(train) == 8 and not set(train) & set(val)
    assert np.array_equal(split_episodes(10, 0.2, seed=0)[1], val)
    assert len(split_episodes(1, 0.5, seed=0)[0]) == 1  # never an empty training split
    with pytest.raises(ValueError, match="val_ratio"):
        split_episodes(10, 1.0, 0)
