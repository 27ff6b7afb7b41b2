"""Statistics for comparing sweep points with seeds as samples: t-intervals, Welch's and the paired
t-test, and Holm's correction for testing several comparisons at once (scipy's Student-t tails)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import stats

LEVEL = 0.95          # every interval in a report is a 95% interval
FEW_SEEDS = 3         # below this many seeds a report warns that its intervals are wide and its tests weak


def t_interval(xs, level: float = LEVEL) -> tuple[float, float]:
    """(mean, half-width) of the Student-t interval for the mean of xs; half-width nan below two samples."""
    xs = np.asarray(xs, float)
    if len(xs) == 0:
        return math.nan, math.nan
    if len(xs) < 2:
        return float(xs.mean()), math.nan
    return float(xs.mean()), float(stats.t.ppf(0.5 + level / 2, len(xs) - 1) * xs.std(ddof=1) / math.sqrt(len(xs)))


def welch(a, b) -> tuple[float, float, float]:
    """(t, degrees of freedom, two-sided p) for "mean(a) == mean(b)" without assuming equal variances."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if min(len(a), len(b)) < 2:
        raise ValueError("Welch's t-test needs at least two samples per group")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    diff = float(a.mean() - b.mean())
    if va + vb == 0:  # no spread at all: the means are either equal or certainly different
        return (0.0 if diff == 0 else math.copysign(math.inf, diff)), math.inf, float(diff == 0)
    result = stats.ttest_ind(a, b, equal_var=False)  # Welch-Satterthwaite degrees of freedom
    return float(result.statistic), float(result.df), float(result.pvalue)


def paired(a, b) -> tuple[float, float, float]:
    """(t, degrees of freedom, two-sided p) for "mean(a - b) == 0", a[i] and b[i] sharing seed i."""
    d = np.asarray(a, float) - np.asarray(b, float)
    if len(d) < 2:
        raise ValueError("the paired t-test needs at least two pairs")
    if d.std(ddof=1) == 0:
        return (0.0 if d.mean() == 0 else math.copysign(math.inf, d.mean())), float(len(d) - 1), float(d.mean() == 0)
    result = stats.ttest_rel(a, b)
    return float(result.statistic), float(result.df), float(result.pvalue)


def holm(ps: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values: reject where adjusted p < alpha and the family-wise error
    rate stays below alpha, for any dependence between the tests."""
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    adjusted, running = [math.nan] * len(ps), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))  # monotone: never below an earlier step
        adjusted[i] = running
    return adjusted


@dataclasses.dataclass(frozen=True)
class Test:
    """One comparison of two samples: the difference of means a - b with its interval, and the test."""
    kind: str          # "paired" (by seed) or "Welch"
    diff: float
    half: float        # half-width of the 95% interval of diff
    t: float
    df: float
    p: float
    n: tuple[int, int]


def compare(a, b, pair: bool) -> Test | None:
    """The paired t-test where a[i] and b[i] share a seed (`pair`), Welch's otherwise; None below two samples."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if min(len(a), len(b)) < 2:
        return None
    if pair:
        t, df, p = paired(a, b)
        diff, half = t_interval(a - b)
    else:
        t, df, p = welch(a, b)
        diff = float(a.mean() - b.mean())
        se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
        half = 0.0 if se == 0 else float(stats.t.ppf(0.5 + LEVEL / 2, df) * se)
    return Test("paired" if pair else "Welch", diff, half, t, df, p, (len(a), len(b)))
