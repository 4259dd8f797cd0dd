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
