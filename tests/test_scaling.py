"""Scaling-law fits on losses drawn from a known law with noise: approach 2's isoFLOP minima and power laws and
approach 3's parametric fit recover the law's exponents; too little data gives a reason, not a number."""

import math

import numpy as np
import pytest

from gptjax.ablate import scaling

# Chinchilla's fitted law (Hoffmann et al. 2022, approach 3), C = 6 N D.
E, A, B, ALPHA, BETA = 1.69, 406.4, 410.7, 0.34, 0.28
G = (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA))


def law(n, d):
    return E + A / n ** ALPHA + B / d ** BETA


@pytest.fixture(scope="module")
def drawn():
    """Five budgets, seven sizes around each optimum, two seeds each, 0.3% multiplicative noise."""
    rng = np.random.default_rng(0)
    rows = []
    for c in (1e18, 3e18, 1e19, 3e19, 1e20):
        n_opt = G * (c / 6) ** (BETA / (ALPHA + BETA))
        for n in n_opt * np.logspace(-0.8, 0.8, 7):
            rows += [(c, n, c / (6 * n), law(n, c / (6 * n)) * math.exp(rng.normal(0, 0.003))) for _ in range(2)]
    return np.array(rows)


def profiles(rows, resamples=100):
    rng = np.random.default_rng(1)
    return [scaling.profile(c, *rows[rows[:, 0] == c, 1:].T, rng, resamples) for c in np.unique(rows[:, 0])]


def test_isoflop_minima_and_power_laws_recover_the_exponents(drawn):
    found = profiles(drawn)
    for p in found:
        truth = G * (p.budget / 6) ** (BETA / (ALPHA + BETA))
        assert p.n_opt.lo < p.n_opt.value < p.n_opt.hi and abs(math.log10(p.n_opt.value / truth)) < 0.05
    a, b = scaling.power_law(found, 0), scaling.power_law(found, 1)
    assert a.exponent.value == pytest.approx(BETA / (ALPHA + BETA), abs=0.02)  # 0.452
    assert b.exponent.value == pytest.approx(ALPHA / (ALPHA + BETA), abs=0.02)  # 0.548
    assert a.exponent.lo < a.exponent.value < a.exponent.hi and a.exponent.hi - a.exponent.lo < 0.05
    at = a.at(1e21)  # one decade past the data, with the interval of the bootstrap lines
    assert at.lo < at.value < at.hi and abs(math.log10(at.value / (G * (1e21 / 6) ** 0.4516))) < 0.1


def test_the_parametric_fit_recovers_the_law(drawn):
    fit = scaling.parametric(drawn[:, 1], drawn[:, 2], drawn[:, 3], np.random.default_rng(2), resamples=20)
    est = fit.estimates
    assert est["alpha"].value == pytest.approx(ALPHA, abs=0.03) and est["beta"].value == pytest.approx(BETA, abs=0.03)
    assert est["E"].value == pytest.approx(E, rel=0.05)
    n, d = fit.optimum(1e21, 6.0)
    assert n * d * 6 == pytest.approx(1e21) and abs(math.log10(n / (G * (1e21 / 6) ** 0.4516))) < 0.15


def test_too_little_data_gives_reasons_not_numbers(drawn):
    rng = np.random.default_rng(3)
    one_budget = drawn[drawn[:, 0] == 1e19]
    found = profiles(one_budget)
    assert scaling.power_law(found, 0) == "1 budget with a minimum inside its sizes: a power law needs 2 or more"
    two_sizes = one_budget[one_budget[:, 1] <= np.unique(one_budget[:, 1])[1]]
    p = scaling.profile(1e19, *two_sizes[:, 1:].T, rng)
    assert p.n_opt is None and p.why == "2 sizes at this budget: a parabola needs 3 or more"
    falling = scaling.profile(1e19, [1e6, 1e7, 1e8], [1e10, 1e9, 1e8], [3.0, 2.5, 2.1], rng)
    assert falling.n_opt is None and falling.why.startswith("no minimum among the sizes trained: the loss is lowest "
                                                            "at the largest size")
    one_seed = scaling.profile(1e19, *one_budget[::2, 1:].T, rng)  # one run per size: nothing to resample
    assert math.isnan(one_seed.n_opt.lo) and "resamples do not vary" in one_seed.n_opt.why
    assert "the five-parameter fit needs 6 or more runs" in scaling.parametric([1e6] * 3, [1e9] * 3, [2.0] * 3, rng)
