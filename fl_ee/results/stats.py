"""Statistics over seeds: mean, spread, Student-t confidence intervals and t-tests, as pure functions.

Values are one number per seed (a run's headline metric). The Student t distribution
comes from ``scipy.stats``; everything else is spelled out here so that each figure can
be checked by hand. A test between two settings is *paired* when both ran the same
seeds (each seed fixes the split, tiers and initial weights, so the seed's effect
cancels in the difference) and Welch's unequal-variance test otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

LEVEL = 0.95  # confidence of the intervals
ALPHA = 0.05  # significance level of the tests (two-sided)
Test = Literal["paired t-test", "Welch's t-test"]
PAIRED: Test = "paired t-test"
WELCH: Test = "Welch's t-test"


def mean(values: Sequence[float]) -> float:
    """The arithmetic mean (of at least one value)."""
    return math.fsum(values) / len(values)


def sample_std(values: Sequence[float]) -> float | None:
    """The sample standard deviation (divisor n - 1); ``None`` for fewer than two values."""
    if len(values) < 2:
        return None
    m = mean(values)
    return math.sqrt(math.fsum((v - m) ** 2 for v in values) / (len(values) - 1))


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom."""
    from scipy.stats import t as student_t  # here: SciPy takes 0.3 s to import, too long for a refusal

    return float(student_t.ppf(p, df))


def two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom."""
    if math.isinf(t):
        return 0.0
    from scipy.stats import t as student_t

    return float(2 * student_t.sf(abs(t), df))


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float] | None:
    """The Student-t confidence interval of the mean, ``mean -/+ t_{(1+level)/2, n-1} s / sqrt(n)``.

    ``None`` for fewer than two values (no spread to measure).
    """
    s = sample_std(values)
    if s is None:
        return None
    m, n = mean(values), len(values)
    half = t_quantile((1 + level) / 2, n - 1) * s / math.sqrt(n)
    return m - half, m + half


def describe(values: Sequence[float | None]) -> dict[str, Any]:
    """``n``, ``mean``, ``std`` and ``ci95`` ([low, high]) of the values present (``None``s skipped)."""
    present = [float(v) for v in values if v is not None]
    interval = t_interval(present)
    return {"n": len(present), "mean": mean(present) if present else None, "std": sample_std(present),
            "ci95": list(interval) if interval else None}


@dataclass(frozen=True)
class Significance:
    """A two-sided t-test of ``difference`` (other minus baseline) against 0."""

    test: Test
    difference: float
    t: float
    df: float
    p: float

    @property
    def significant(self) -> bool:
        """Whether p < :data:`ALPHA`."""
        return self.p < ALPHA


def _t_test(test: Test, difference: float, se: float, df: float) -> Significance:
    """The test of ``difference`` with standard error ``se``; with ``se`` 0, p is 0 (1 for no difference)."""
    if se == 0:
        t = 0.0 if difference == 0 else math.copysign(math.inf, difference)
        return Significance(test, difference, t, df, 1.0 if difference == 0 else 0.0)
    t = difference / se
    return Significance(test, difference, t, df, two_sided_p(t, df))


def paired_t_test(baseline: Sequence[float], other: Sequence[float]) -> Significance | None:
    """Paired t-test of ``other[i] - baseline[i]`` (the same seed at ``i``); ``None`` below two pairs.

    ``t = mean(d) / (s_d / sqrt(n))`` with ``n - 1`` degrees of freedom.
    """
    if len(baseline) != len(other):
        raise ValueError("a paired test needs one value of each side per seed")
    d = [o - b for b, o in zip(baseline, other)]
    s = sample_std(d)
    if s is None:
        return None
    return _t_test(PAIRED, mean(d), s / math.sqrt(len(d)), len(d) - 1)


def welch_t_test(baseline: Sequence[float], other: Sequence[float]) -> Significance | None:
    """Welch's t-test of ``mean(other) - mean(baseline)``; ``None`` when a side has fewer than two values.

    ``t = (m2 - m1) / sqrt(v1/n1 + v2/n2)``; degrees of freedom by Welch-Satterthwaite,
    ``(v1/n1 + v2/n2)^2 / ((v1/n1)^2/(n1-1) + (v2/n2)^2/(n2-1))``.
    """
    s1, s2 = sample_std(baseline), sample_std(other)
    if s1 is None or s2 is None:
        return None
    a, b = s1**2 / len(baseline), s2**2 / len(other)
    se2 = a + b
    df = se2**2 / (a**2 / (len(baseline) - 1) + b**2 / (len(other) - 1)) if se2 else len(baseline) + len(other) - 2
    return _t_test(WELCH, mean(other) - mean(baseline), math.sqrt(se2), df)


def compare_seeds(baseline: Mapping[int, float | None], other: Mapping[int, float | None]) -> Significance | None:
    """The test of ``other`` against ``baseline`` (values by seed; ``None`` = missing).

    Paired when both have values for the same seeds, Welch's test otherwise; ``None``
    when there are too few values for either.
    """
    b = {s: v for s, v in baseline.items() if v is not None}
    o = {s: v for s, v in other.items() if v is not None}
    if set(b) == set(o):
        seeds = sorted(b)
        return paired_t_test([b[s] for s in seeds], [o[s] for s in seeds])
    return welch_t_test(list(b.values()), list(o.values()))
