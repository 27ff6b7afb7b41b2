"""Welch's t-test for comparing sweep points (seeds as samples), on scipy's Student-t tail."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


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
