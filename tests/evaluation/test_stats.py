import math

import pytest

from s2policy.evaluation.stats import success_rate, wilson_interval


@pytest.mark.parametrize(
    "k, n, low, high",
    [  # reference values: statsmodels proportion_confint(method="wilson")
        (81, 263, 0.2553, 0.3662),
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (50, 100, 0.4038, 0.5962),
        (95, 100, 0.8883, 0.9785),
    ],
)
def test_wilson_known_values(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)


def test_success_rate_string_carries_count_and_interval():
    s = success_rate(19, 20)
    assert s.rate == 0.95 and str(s).startswith("95.0% [") and str(s).endswith("(19/20)")


@pytest.mark.parametrize("k, n", [(1, 0), (-1, 5), (6, 5)])
def test_bad_counts(k, n):
    with pytest.raises(ValueError):
        wilson_interval(k, n)


@pytest.mark.parametrize(
    "a, n_a, b, n_b, low, high",
    [
        # Newcombe (1998), Statistics in Medicine 17:873-890, Table II, method 10
        (56, 70, 48, 80, 0.0524, 0.3339),
        (9, 10, 3, 10, 0.1705, 0.8090),
        (6, 7, 2, 7, 0.0582, 0.8062),
        (5, 56, 0, 29, -0.0381, 0.1926),
        (0, 10, 0, 20, -0.1611, 0.2775),
        (10, 10, 0, 20, 0.6791, 1.0000),
    ],
)
def test_difference_interval_matches_newcombe_worked_examples(a, n_a, b, n_b, low, high):
    from s2policy.evaluation.stats import difference_interval

    d, lo, hi = difference_interval(a, n_a, b, n_b)
    assert d == pytest.approx(a / n_a - b / n_b)
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)


def test_student_t_quantiles_and_the_interval_of_a_mean():
    from s2policy.evaluation.stats import mean_interval, t_quantile

    # the table values (two-sided 95 %: the 0.975 quantile)
    for df, t in ((1, 12.706), (2, 4.303), (5, 2.571), (10, 2.228), (30, 2.042), (1000, 1.962)):
        assert t_quantile(0.975, df) == pytest.approx(t, abs=5e-4), df
    assert t_quantile(0.025, 4) == pytest.approx(-2.776, abs=5e-4)
    mean, low, high = mean_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and high - mean == pytest.approx(4.303 / 3**0.5, abs=1e-3)
    assert math.isnan(mean_interval([1.0])[1])
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)
