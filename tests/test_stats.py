"""The statistics over seeds, checked by hand and against textbook values.

Student's sleep data (Cushny and Peebles, as in R's ``datasets::sleep``): the extra hours
of sleep of ten patients under two drugs. R's ``t.test`` gives, paired, t = -4.0621,
df = 9, p = 0.002833, CI of the difference (-2.4598858, -0.7001142); Welch, t = -1.8608,
df = 17.776, p = 0.07939.
"""

import math

import pytest

from fl_ee.results.stats import (
    PAIRED,
    WELCH,
    compare_seeds,
    describe,
    mean,
    paired_t_test,
    sample_std,
    t_interval,
    t_quantile,
    welch_t_test,
)

DRUG1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
DRUG2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]


def test_mean_and_sample_std_by_hand():
    values = [2, 4, 4, 4, 5, 5, 7, 9]  # squared deviations from 5 sum to 32
    assert mean(values) == 5
    assert sample_std(values) == pytest.approx(math.sqrt(32 / 7))
    assert sample_std([3.0]) is None


def test_t_quantiles_match_the_table():
    # two-sided 95%: t_{0.975, df} from any Student-t table
    for df, table in ((1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (30, 2.042)):
        assert t_quantile(0.975, df) == pytest.approx(table, abs=5e-4)


def test_t_interval_by_hand():
    # [1, 2, 3]: mean 2, s 1, half-width t_{0.975,2} / sqrt(3) = 4.302653 / 1.732051 = 2.484138
    low, high = t_interval([1, 2, 3])
    assert (low, high) == pytest.approx((2 - 2.484138, 2 + 2.484138), abs=1e-6)
    assert t_interval([0.5]) is None
    assert describe([1, None, 2, 3]) == {"n": 3, "mean": 2, "std": 1, "ci95": pytest.approx([low, high])}
    assert describe([None]) == {"n": 0, "mean": None, "std": None, "ci95": None}


def test_paired_t_test_by_hand_and_on_the_sleep_data():
    # d = [1, 2, 2, 1]: mean 1.5, s_d = sqrt(1/3), t = 1.5 / (sqrt(1/3) / 2) = 5.196152, df 3
    result = paired_t_test([1, 2, 3, 4], [2, 4, 5, 5])
    assert result.test == PAIRED and result.df == 3 and result.difference == 1.5
    assert result.t == pytest.approx(3 * math.sqrt(3))
    assert 0.01 < result.p < 0.05  # t_{0.975,3} = 3.182 < 5.196 < t_{0.995,3} = 5.841
    sleep = paired_t_test(DRUG2, DRUG1)
    assert sleep.t == pytest.approx(-4.0621, abs=1e-4) and sleep.df == 9
    assert sleep.p == pytest.approx(0.002833, abs=1e-6) and sleep.significant
    d = [a - b for a, b in zip(DRUG1, DRUG2)]
    assert t_interval(d) == pytest.approx((-2.4598858, -0.7001142), abs=1e-7)


def test_welch_t_test_by_hand_and_on_the_sleep_data():
    # [1, 2, 3] vs [4, 6, 8, 10]: variances 1 and 20/3, se^2 = 1/3 + 5/3 = 2, t = 5 / sqrt(2),
    # df = 2^2 / ((1/3)^2 / 2 + (5/3)^2 / 3) = 4 / (1/18 + 25/27) = 216 / 53
    result = welch_t_test([1, 2, 3], [4, 6, 8, 10])
    assert result.test == WELCH and result.difference == 5
    assert result.t == pytest.approx(5 / math.sqrt(2)) and result.df == pytest.approx(216 / 53)
    sleep = welch_t_test(DRUG2, DRUG1)
    assert sleep.t == pytest.approx(-1.8608, abs=1e-4) and sleep.df == pytest.approx(17.776, abs=1e-3)
    assert sleep.p == pytest.approx(0.07939, abs=1e-5) and not sleep.significant
    assert welch_t_test([1.0], [2.0, 3.0]) is None


def test_no_spread_is_certain_unless_nothing_differs():
    same = paired_t_test([1, 2, 3], [1, 2, 3])
    assert same.p == 1.0 and not same.significant
    shifted = paired_t_test([1, 2, 3], [2, 3, 4])
    assert shifted.p == 0.0 and shifted.t == math.inf and shifted.significant
    assert welch_t_test([5, 5], [5, 5]).p == 1.0


def test_seeds_pair_where_they_match_and_welch_otherwise():
    baseline = {0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0}
    assert compare_seeds(baseline, {0: 2.0, 1: 4.0, 2: 5.0, 3: 5.0}).test == PAIRED
    assert compare_seeds(baseline, {4: 2.0, 5: 4.0, 6: 5.0}).test == WELCH
    # a missing value (a target never reached) leaves the seeds unmatched
    assert compare_seeds(baseline, {0: 2.0, 1: None, 2: 5.0, 3: 5.0}).test == WELCH
    assert compare_seeds({0: 1.0}, {0: 2.0}) is None
