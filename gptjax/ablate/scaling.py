"""Scaling-law fits on runs trained to compute budgets, as Hoffmann et al. 2022 ("Chinchilla") fit them.

Approach 2 (isoFLOP profiles): at each budget C, a parabola of loss against log10 N over the sizes
trained; its vertex is N_opt(C), and D_opt(C) is read off the budget's own tokens-against-size line at
N_opt. Then the power laws N_opt = k C^a and D_opt = k' C^b by least squares in log-log.
Approach 3: L(N, D) = E + A / N^alpha + B / D^beta, fitted by minimising the Huber loss (delta 1e-3) of
log L with L-BFGS from a grid of starts. Intervals are bootstrap percentiles: for approach 2 over seeds
(each size's runs resampled within its budget), for approach 3 over runs.

Pure numpy and scipy: every function returns numbers or a reason why none can be had, never prints.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
from scipy import optimize

HUBER_DELTA = 1e-3
BOOTSTRAP = 200       # resamples; percentiles 2.5 and 97.5 make the 95% interval
MIN_SIZES = 3         # a parabola through fewer distinct sizes has no free parameter left to check it
EXTRAPOLATED = "the minimum lies outside the sizes trained: N_opt is extrapolated, and left out of the power laws"
REACH = 0.5           # a vertex further outside the sizes trained than this share of their log-range is no minimum
# Chinchilla's grid of starts (their appendix D.2); L-BFGS runs from the BEST_STARTS with the lowest loss
# on the data, since most of the 4,500 lead to the same few minima.
STARTS = {"alpha": np.arange(0.0, 2.01, 0.5), "beta": np.arange(0.0, 2.01, 0.5), "e": np.arange(-1.0, 1.01, 0.5),
          "a": np.arange(0.0, 25.1, 5.0), "b": np.arange(0.0, 25.1, 5.0)}
BEST_STARTS = 16


@dataclasses.dataclass(frozen=True)
class Estimate:
    value: float
    lo: float = math.nan      # 95% bootstrap interval, nan where none could be had (`why` says)
    hi: float = math.nan
    why: str = ""

    def scaled(self, f) -> Estimate:
        return Estimate(f(self.value), f(self.lo), f(self.hi), self.why)


def interval(samples, value: float, what: str) -> Estimate:
    samples = np.asarray(samples, float)
    finite = samples[np.isfinite(samples)]
    if len(finite) < 0.9 * len(samples) or len(finite) < 10:
        return Estimate(value, why=f"no interval: {what} could not be fitted on most resamples")
    lo, hi = np.percentile(finite, [2.5, 97.5])
    if lo == hi:
        return Estimate(value, why="no interval: the resamples do not vary (one seed per size?)")
    return Estimate(value, float(lo), float(hi))


# ---------------------------------------------------------------------------
# Approach 2: isoFLOP profiles

@dataclasses.dataclass(frozen=True)
class Profile:
    budget: float
    n: np.ndarray          # one entry per run
    d: np.ndarray
    loss: np.ndarray
    coef: np.ndarray | None = None     # the parabola in log10 N, highest power first
    n_opt: Estimate | None = None
    d_opt: Estimate | None = None
    loss_min: float = math.nan
    why: str = ""                      # why there is no minimum, or what to keep in mind about it
    samples: np.ndarray | None = None  # bootstrap replicates of (log10 N_opt, log10 D_opt), shape [B, 2]


def vertex(x, y) -> tuple[np.ndarray, float]:
    """The least-squares parabola y = c0 x^2 + c1 x + c2 and its vertex x: nan where it opens downward, or
    lies so far outside the x trained (REACH) that the parabola says only that the loss keeps falling."""
    coef = np.polyfit(x, y, 2)
    at = -coef[1] / (2 * coef[0]) if coef[0] > 0 else math.nan
    slack = REACH * (np.max(x) - np.min(x))
    return coef, at if np.min(x) - slack <= at <= np.max(x) + slack else math.nan


def profile(budget: float, n, d, loss, rng: np.random.Generator, resamples: int = BOOTSTRAP) -> Profile:
    """The isoFLOP minimum of one budget's runs (n, d, loss: one entry per run, seeds included)."""
    n, d, loss = (np.asarray(v, float) for v in (n, d, loss))
    base = Profile(budget, n, d, loss)
    sizes = np.unique(n)
    if len(sizes) < MIN_SIZES:
        return dataclasses.replace(base, why=f"{len(sizes)} size{'s' * (len(sizes) != 1)} at this budget: a parabola "
                                             f"needs {MIN_SIZES} or more")
    x, logd = np.log10(n), np.log10(d)
    coef, x_opt = vertex(x, loss)
    if math.isnan(x_opt):
        side = "smallest" if np.polyval(coef, x.min()) < np.polyval(coef, x.max()) else "largest"
        why = f"no minimum among the sizes trained: the loss is lowest at the {side} size and keeps falling"
        return dataclasses.replace(base, coef=coef, why=why + "; train sizes on both sides of it")
    line = np.polyfit(x, logd, 1)  # tokens against size at this budget, to read D_opt at N_opt
    groups = [np.flatnonzero(n == s) for s in sizes]
    samples = np.full((resamples, 2), np.nan)
    for i in range(resamples):
        pick = np.concatenate([rng.choice(g, len(g)) for g in groups])  # each size's seeds, resampled
        _, xb = vertex(x[pick], loss[pick])
        samples[i] = xb, np.polyval(line, xb)
    outside = not x.min() <= x_opt <= x.max()
    why = EXTRAPOLATED if outside else ""
    n_opt = interval(samples[:, 0], x_opt, "a minimum").scaled(lambda v: 10 ** v)
    d_opt = interval(samples[:, 1], float(np.polyval(line, x_opt)), "a minimum").scaled(lambda v: 10 ** v)
    return dataclasses.replace(base, coef=coef, n_opt=n_opt, d_opt=d_opt, loss_min=float(np.polyval(coef, x_opt)),
                               why=why, samples=samples)


@dataclasses.dataclass(frozen=True)
class PowerLaw:
    exponent: Estimate
    log10_k: float         # X_opt = 10^log10_k * C^exponent
    replicates: np.ndarray  # bootstrap (exponent, log10_k), [B, 2], nan where a resample had no minimum

    def at(self, c: float) -> Estimate:
        """X_opt at budget c, with the interval of the bootstrap lines there."""
        value = 10 ** (self.log10_k + self.exponent.value * math.log10(c))
        logs = self.replicates[:, 1] + self.replicates[:, 0] * math.log10(c)
        found = interval(logs, math.log10(value), "a minimum at every budget").scaled(lambda v: 10 ** v)
        return dataclasses.replace(found, why=found.why or self.exponent.why)


def power_law(profiles: list[Profile], column: int) -> PowerLaw | str:
    """X_opt ∝ C^exponent through the budgets' minima (column 0: N_opt, 1: D_opt), its interval from the
    bootstrap replicates (replicate i of every budget together)."""
    good = [p for p in profiles if p.n_opt is not None and p.why != EXTRAPOLATED]
    if len(good) < 2:
        return (f"{len(good)} budget{'s' * (len(good) != 1)} with a minimum inside its sizes: a power law needs 2 or "
                f"more")
    logc = np.log10([p.budget for p in good])
    value = np.log10([(p.n_opt, p.d_opt)[column].value for p in good])
    slope, k = np.polyfit(logc, value, 1)
    replicates = np.stack([p.samples[:, column] for p in good], axis=1)  # [B, budgets]
    ok = np.isfinite(replicates).all(axis=1)
    lines = np.full((len(replicates), 2), np.nan)
    if ok.any():
        lines[ok] = np.polyfit(logc, replicates[ok].T, 1).T
    estimate = interval(lines[:, 0], float(slope), "a minimum at every budget")
    if len(good) == 2 and not estimate.why:
        estimate = dataclasses.replace(estimate, why="two budgets: the line passes through both minima, and the "
                                                     "interval holds only their seed noise")
    return PowerLaw(estimate, float(k), lines)


# ---------------------------------------------------------------------------
# Approach 3: the parametric fit

NAMES = ("E", "A", "B", "alpha", "beta")


def _objective(theta, logn, logd, logl):
    """Huber loss of log L and its gradient; theta = (a, b, e, alpha, beta) with A = e^a, B = e^b, E = e^e."""
    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * logn, b - beta * logd, np.full_like(logn, e)])
    top = terms.max(axis=0)
    w = np.exp(terms - top)
    total = w.sum(axis=0)
    r = top + np.log(total) - logl
    w /= total
    huber = np.where(np.abs(r) <= HUBER_DELTA, 0.5 * r * r, HUBER_DELTA * (np.abs(r) - 0.5 * HUBER_DELTA))
    g = np.clip(r, -HUBER_DELTA, HUBER_DELTA)
    grad = np.array([g @ w[0], g @ w[1], g @ w[2], -(g * w[0]) @ logn, -(g * w[1]) @ logd])
    return huber.sum(), grad


def _huber_at(starts: np.ndarray, logn, logd, logl) -> np.ndarray:
    """The Huber loss of every start at once (starts: [S, 5]), to pick the ones worth optimising."""
    a, b, e, alpha, beta = (starts[:, i:i + 1] for i in range(5))
    pred = np.logaddexp(np.logaddexp(a - alpha * logn, b - beta * logd), e)
    r = np.abs(pred - logl)
    return np.where(r <= HUBER_DELTA, 0.5 * r * r, HUBER_DELTA * (r - 0.5 * HUBER_DELTA)).sum(axis=1)


def _minimise(starts, logn, logd, logl) -> np.ndarray | None:
    best, best_f = None, math.inf
    bounds = [(None, None)] * 3 + [(0.0, 4.0)] * 2
    for start in starts:
        # The loss is small (about n delta^2): scipy's stopping test is absolute below 1, so it is made relative.
        res = optimize.minimize(_objective, start, args=(logn, logd, logl), jac=True, method="L-BFGS-B", bounds=bounds,
                                options={"ftol": 1e-12, "gtol": 1e-10, "maxiter": 2000})
        if np.isfinite(res.fun) and res.fun < best_f:
            best, best_f = res.x, res.fun
    return best


@dataclasses.dataclass(frozen=True)
class Parametric:
    theta: np.ndarray                  # (a, b, e, alpha, beta) of the point fit
    estimates: dict[str, Estimate]     # E, A, B, alpha, beta with intervals
    replicates: np.ndarray             # bootstrap thetas, [B, 5] (rows of nan where a fit failed)

    def loss(self, n, d, theta=None) -> np.ndarray:
        a, b, e, alpha, beta = self.theta if theta is None else theta
        return np.exp(e) + np.exp(a) * np.asarray(n, float) ** -alpha + np.exp(b) * np.asarray(d, float) ** -beta

    def optimum(self, c: float, kappa: float, theta=None) -> tuple[float, float]:
        """(N_opt, D_opt) minimising L under C = kappa N D (Chinchilla's closed form, with kappa for their 6)."""
        a, b, _, alpha, beta = self.theta if theta is None else theta
        if alpha <= 0 or beta <= 0:
            return math.nan, math.nan
        g = (alpha * math.exp(a) / (beta * math.exp(b))) ** (1 / (alpha + beta))
        n = g * (c / kappa) ** (beta / (alpha + beta))
        return n, c / (kappa * n)


def parametric(n, d, loss, rng: np.random.Generator, resamples: int = BOOTSTRAP) -> Parametric | str:
    n, d, loss = (np.asarray(v, float) for v in (n, d, loss))
    if len(n) < 6 or len(np.unique(n)) < 2 or len(np.unique(d)) < 2:
        return (f"{len(n)} runs, {len(np.unique(n))} sizes, {len(np.unique(d))} token counts: the five-parameter fit "
                f"needs 6 or more runs with 2 or more of each")
    logn, logd, logl = np.log(n), np.log(d), np.log(loss)
    grid = np.array([[a, b, e, al, be] for al, be, e, a, b in itertools.product(*STARTS.values())])
    ranked = grid[np.argsort(_huber_at(grid, logn, logd, logl))[:BEST_STARTS]]
    theta = _minimise(ranked, logn, logd, logl)
    if theta is None:
        return "the fit did not converge from any start"
    # Each resample starts from the point fit alone: a resample's minimum lies near it, and the
    # whole grid per resample would take minutes.
    seeds = [theta]
    replicates = np.full((resamples, 5), np.nan)
    for i in range(resamples):
        pick = rng.integers(0, len(n), len(n))
        if len(np.unique(n[pick])) >= 2 and len(np.unique(d[pick])) >= 2:
            found = _minimise(seeds, logn[pick], logd[pick], logl[pick])
            replicates[i] = found if found is not None else np.nan
    values = {"E": np.exp(theta[2]), "A": np.exp(theta[0]), "B": np.exp(theta[1]), "alpha": theta[3], "beta": theta[4]}
    columns = {"E": np.exp(replicates[:, 2]), "A": np.exp(replicates[:, 0]), "B": np.exp(replicates[:, 1]),
               "alpha": replicates[:, 3], "beta": replicates[:, 4]}
    estimates = {k: interval(columns[k], float(values[k]), "the fit") for k in NAMES}
    if values["E"] < 1e-3 * loss.min():  # no floor in sight: the data cannot tell E from 0
        estimates["E"] = Estimate(float(values["E"]), why="not identified: the fit drives E to 0, as these losses "
                                                         "show no floor")
    return Parametric(theta, estimates, replicates)
