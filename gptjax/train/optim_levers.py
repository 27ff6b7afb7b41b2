"""Optimizer levers from modded-nanogpt's records: Polar Express coefficients, NorMuon, cautious weight decay."""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax.contrib import MuonDimensionNumbers

# Muon's Newton-Schulz quintic (Jordan's): one (a, b, c) for every iteration, optax's default.
NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)

# Polar Express (Amsel, Persson, Musco, Gower 2025, arXiv:2505.16932), with the settings of modded-nanogpt's
# polar_express_coeffs ("num_iters=5, safety_factor=2e-2, cushion=2", i.e. 0.02): polar_express_coeffs below
# derives that list again (within 1e-12, tests/test_optim_levers.py), so it is computed, not pasted.
PE_STEPS, PE_LOWER, PE_CUSHION, PE_SAFETY = 5, 1e-3, 0.02, 1.02


def minimax_quintic(lower: float, upper: float) -> tuple[float, float, float]:
    """The odd quintic p(x) = a·x + b·x³ + c·x⁵ closest to 1 in max norm on [lower, upper], by Remez exchange:
    the error equioscillates at lower, p's two critical points and upper (as the paper constructs it)."""
    if lower / upper > 1 - 5e-6:  # the interval is a point: the limit of the equioscillating quintics
        return 15 / 8 / upper, -10 / 8 / upper**3, 3 / 8 / upper**5
    xs = np.array([lower, (3 * lower + upper) / 4, (lower + 3 * upper) / 4, upper])
    for _ in range(100):
        a, b, c, _err = np.linalg.solve(np.stack([xs, xs**3, xs**5, [1, -1, 1, -1]], axis=1), np.ones(4))
        # p'(x) = a + 3b·x² + 5c·x⁴ = 0: a quadratic in x², its two roots the inner extremes
        inner = np.sqrt((-3 * b + np.array([-1, 1]) * math.sqrt(9 * b * b - 20 * a * c)) / (10 * c))
        if np.array_equal(inner, xs[1:3]):
            break
        xs[1:3] = inner
    return float(a), float(b), float(c)


def quintic(abc, x):
    a, b, c = abc
    return a * x + b * x**3 + c * x**5


@functools.cache
def polar_express_coeffs(steps: int = PE_STEPS, lower: float = PE_LOWER, cushion: float = PE_CUSHION,
                         safety: float = PE_SAFETY) -> tuple[tuple[float, float, float], ...]:
    """One optimal quintic per iteration (the paper's greedy composition): each maps the singular values' current
    interval [l, u] as close to 1 as a quintic can, and the next starts from the interval it leaves, so early
    steps lift the small singular values fast and late ones converge (Newton-Schulz reuses one quintic).

    cushion: a step never aims below cushion·u (a small l would ask for a steep, badly-conditioned quintic); it
    is fitted on [cushion·u, u] then rescaled so that p(l) and p(u) straddle 1 evenly. safety: every step but the
    last is fitted for inputs up to `safety` times larger (coefficients k divided by safety^(2k+1)), so a
    singular value a rounding error puts past the interval's top is not amplified."""
    upper, out = 1.0, []
    for i in range(steps):
        abc = minimax_quintic(max(lower, cushion * upper), upper)
        a, b, c = (k * 2 / (quintic(abc, lower) + quintic(abc, upper)) for k in abc)
        if i < steps - 1:
            a, b, c = a / safety, b / safety**3, c / safety**5
        out.append((a, b, c))
        lower = quintic((a, b, c), lower)
        upper = 2 - lower
    return tuple(out)


def muon_coeffs(iteration: str):
    """ns_coeffs for optax's scale_by_muon. optax divides by the Frobenius norm (so every singular value is at
    most 1); Polar Express (paper, modded-nanogpt) divides by safety times it (1.02: a margin for rounding). Its
    first quintic on X/s equals the one with coefficients (a/s, b/s³, c/s⁵) on X, so the margin is folded in."""
    if iteration == "newton_schulz":
        return NEWTON_SCHULZ
    (a, b, c), *rest = polar_express_coeffs()
    return ((a / PE_SAFETY, b / PE_SAFETY**3, c / PE_SAFETY**5), *rest)


# NorMuon (Li et al. 2025, arXiv:2510.05491): its beta2 and the floor under the second moment,
# as modded-nanogpt's apply_normuon_variance_reduction sets them.
NORMUON_BETA2, NORMUON_FLOOR = 0.95, 1e-10


class NorMuonState(NamedTuple):
    nu: optax.Updates  # per-neuron mean square of the orthogonalised update, an EMA; reduced axes kept as size 1


def neuron_axes(x: jax.Array, dims: MuonDimensionNumbers) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(axes a neuron's statistic averages over, the matrix's axes). A neuron is an output unit (the paper's
    rows), or an input unit where a matrix has more inputs than outputs (modded-nanogpt: the larger side):
    an orthogonalised wide-input matrix has near-orthonormal output columns, whose norms are already equal."""
    norm = lambda axes: tuple(a % x.ndim for a in ((axes,) if isinstance(axes, int) else axes))  # noqa: E731
    reduction, output = norm(dims.reduction_axis), norm(dims.output_axis)
    fan_in, fan_out = (math.prod(x.shape[a] for a in axes) for axes in (reduction, output))
    return (reduction if fan_out >= fan_in else output), reduction + output


def scale_by_neuron_rms(weight_dimension_numbers, beta2: float = NORMUON_BETA2,
                        floor: float = NORMUON_FLOOR) -> optax.GradientTransformation:
    """NorMuon: divide each neuron's share of Muon's orthogonalised update by the root of an EMA of its mean
    square, then rescale the whole matrix back to the Frobenius norm it had, so the step's size (and RMS)
    stays Muon's and only its spread over neurons changes. No bias correction: it is one factor per matrix,
    which the rescaling cancels. Leaves that are not Muon's matrices (None) keep no statistic."""
    def stat(x, dims):
        return jnp.zeros_like(jnp.mean(x, axis=neuron_axes(x, dims)[0], keepdims=True))

    def init(params):
        return NorMuonState(nu=_map_matrices(stat, params, weight_dimension_numbers(params)))

    def update(updates, state, params=None):
        def moment(o, dims, nu):
            return beta2 * nu + (1 - beta2) * jnp.mean(o * o, axis=neuron_axes(o, dims)[0], keepdims=True)

        def normalise(o, dims, nu):
            norm = lambda u: jnp.sqrt(jnp.sum(u * u, axis=neuron_axes(o, dims)[1], keepdims=True))  # noqa: E731
            scaled = o * jax.lax.rsqrt(jnp.maximum(nu, floor))
            return scaled * (norm(o) / jnp.maximum(norm(scaled), floor))
        dims = weight_dimension_numbers(updates)
        nu = _map_matrices(moment, updates, dims, state.nu)
        return _map_matrices(normalise, updates, dims, nu), NorMuonState(nu=nu)
    return optax.GradientTransformation(init, update)


def _map_matrices(fn, tree, dims, *rest):
    # dims holds a MuonDimensionNumbers (a tuple, so a subtree) where `tree` holds a matrix: map with tree first.
    return jax.tree.map(fn, tree, dims, *rest)


def decay(weight_decay: float, cautious: bool):
    """u -> u + weight_decay·p: decoupled weight decay (the step is -lr·u). cautious: Cautious Weight Decay (Chen
    et al. 2025, arXiv:2510.12402; a modded-nanogpt record): decay only where u and p share a sign
    (u·p >= 0), where the step already shrinks |p|; where it grows |p| the step stands alone."""
    if not cautious:
        return lambda u, p: u + weight_decay * p
    return lambda u, p: jnp.where(u * p >= 0, u + weight_decay * p, u)


def add_decayed_weights(weight_decay: float, mask=None, cautious: bool = False) -> optax.GradientTransformation:
    """optax.add_decayed_weights (its state tree too, so train.cautious_wd may change on resume), maybe cautious."""
    if not cautious:
        return optax.add_decayed_weights(weight_decay, mask)
    inner = optax.GradientTransformation(
        lambda params: optax.EmptyState(),
        lambda updates, state, params: (jax.tree.map(decay(weight_decay, True), updates, params), state))
    return inner if mask is None else optax.masked(inner, mask)
