"""Which heads matter and what each does: knock-out loss changes per head and sublayer, and head-role scores.

Knock-outs patch one head (its output z) or one sublayer at a time with zero or with its
mean over the evaluation batches (mean ablation keeps the activation's average, so only
the information the head carries is taken away), through `hooks.forward`. Role scores are
the standard detectors (as in TransformerLens) read off the attention weights on random
token sequences repeated twice: for each query, the share of its attention on the keys the
role names, averaged over the queries that have such a key.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gptjax.look import hooks
from gptjax.model import GPT

ABLATIONS = ("zero", "mean")


def _none(n: int = 1) -> None:
    """No progress to show."""
ROLES = ("previous-token", "duplicate-token", "induction")


@dataclasses.dataclass(frozen=True)
class Knockouts:
    """Mean loss with nothing knocked out, and its change when each part is (positive: the part helps)."""

    ablation: str
    base: float
    heads_lh: np.ndarray  # [layer, head]
    attn_l: np.ndarray    # whole attention sublayer of each layer
    mlp_l: np.ndarray     # MLP sublayer of each layer


@nnx.jit
def _batch_means(model: GPT, x_bt: jax.Array, patch: hooks.Patch):
    _, cache = hooks.forward(model, x_bt, patch)
    return cache.z_lbthk.mean((1, 2)), cache.attn_out_lbtd.mean((1, 2)), cache.mlp_out_lbtd.mean((1, 2))


def activation_means(model: GPT, batches, tick=_none) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Each head's output z [L, H, K], and each attention and MLP output [L, D], averaged over batches and positions."""
    identity = hooks.Patch.identity(model.cfg)
    parts = []
    for x, _ in batches:
        parts.append(jax.block_until_ready(_batch_means(model, jnp.asarray(x, jnp.int32), identity)))
        tick()
    return tuple(jnp.mean(jnp.stack(p), 0) for p in zip(*parts))


def mean_loss(model: GPT, batches, patch: hooks.Patch, tick=_none) -> float:
    """The patched model's mean loss over `batches`; tick() after each batch."""
    losses = []
    for x, y in batches:
        losses.append(hooks.loss(model, x, y, patch))
        tick()
    return float(np.mean(losses))


def knockout_passes(cfg, n_batches: int, ablation: str = "zero") -> int:
    """The forward passes `knockouts` makes (its ticks): the unpatched model, each head and sublayer knocked out."""
    return n_batches * (1 + cfg.n_layer * cfg.n_head + 2 * cfg.n_layer + (ablation == "mean"))


def knockouts(model: GPT, batches, ablation: str = "zero", tick=_none) -> Knockouts:
    """The loss change on `batches` ((x_bt, y_bt) pairs) from knocking out each head, attention and MLP sublayer.

    tick() after each forward pass (knockout_passes of them): minutes of them on a CPU.
    """
    if ablation not in ABLATIONS:
        raise ValueError(f"ablation must be one of {ABLATIONS}, got {ablation!r}")
    L, H = model.cfg.n_layer, model.cfg.n_head
    identity = hooks.Patch.identity(model.cfg)
    z_lhk, attn_ld, mlp_ld = activation_means(model, batches, tick) if ablation == "mean" else (None, None, None)
    fill = lambda means, *at: None if means is None else means[at]
    base = mean_loss(model, batches, identity, tick)
    change = lambda patch: mean_loss(model, batches, patch, tick) - base
    heads_lh = np.array([[change(identity.ablate_head(l, h, fill(z_lhk, l, h))) for h in range(H)] for l in range(L)])
    attn_l = np.array([change(identity.ablate_attn(l, fill(attn_ld, l))) for l in range(L)])
    mlp_l = np.array([change(identity.ablate_mlp(l, fill(mlp_ld, l))) for l in range(L)])
    return Knockouts(ablation, base, heads_lh, attn_l, mlp_l)


# ---------------------------------------------------------------------------
# Head roles


def repeated_sequences(vocab_size: int, n_ctx: int, bos_ids, batch: int, seed: int) -> np.ndarray:
    """int32[batch, T]: the start-of-document tokens, then n random tokens, then the same n again (2n + bos <= n_ctx).

    The n tokens are distinct when the vocabulary allows (drawn without replacement, the
    start-of-document tokens left out), so every repeat is the one the detectors look for.
    """
    bos = list(bos_ids)
    n = (n_ctx - len(bos)) // 2
    pool = np.array([i for i in range(vocab_size) if i not in bos])
    rng = np.random.default_rng(seed)
    rows = [rng.choice(pool, n, replace=n > len(pool)) for _ in range(batch)]
    return np.array([[*bos, *r, *r] for r in rows], np.int32)


def role_patterns(idx_bt: np.ndarray) -> dict[str, np.ndarray]:
    """For each role, bool[B, T, S]: the keys s a head in that role attends to from query t.

    previous-token: s = t - 1.  duplicate-token: s < t holding the same token as t.
    induction: s <= t whose previous token s - 1 is the same as t's (the token that followed
    t's token last time, which is what an induction head copies).
    """
    idx_bt = np.asarray(idx_bt)
    T = idx_bt.shape[1]
    t, s = np.arange(T)[:, None], np.arange(T)[None, :]
    same_bts = idx_bt[:, :, None] == idx_bt[:, None, :]
    duplicate = same_bts & (s < t)
    induction = np.zeros_like(duplicate)
    induction[:, :, 1:] = duplicate[:, :, :-1]  # (t, s) where (t, s - 1) is a duplicate
    previous = np.broadcast_to(s == t - 1, duplicate.shape)
    return dict(zip(ROLES, (previous, duplicate, induction)))


@nnx.jit
def _role_mass(model: GPT, idx_bt: jax.Array, patterns_rbts: jax.Array) -> jax.Array:
    # Reduced inside the program: only [roles, L, B, H, T] leaves it, never every layer's weights.
    _, cache = hooks.forward(model, idx_bt, hooks.Patch.identity(model.cfg))
    return jnp.einsum("lbhts,rbts->rlbht", cache.probs_lbhts, patterns_rbts.astype(cache.probs_lbhts.dtype))


def role_scores(model: GPT, idx_bt: np.ndarray, tick=_none) -> dict[str, np.ndarray]:
    """Each role's score per head, [L, H] in [0, 1]: 1 is a head that puts all its attention where the role says.
    tick() after each sequence."""
    patterns = role_patterns(idx_bt)
    patterns_rbts = np.stack([patterns[r] for r in ROLES])
    # One sequence at a time: GPT-2's 12 x 12 heads at n_ctx 1024 hold 600 MB of weights per sequence.
    masses = []
    for b in range(len(idx_bt)):
        masses.append(np.asarray(_role_mass(model, jnp.asarray(idx_bt[b:b + 1], jnp.int32),
                                            jnp.asarray(patterns_rbts[:, b:b + 1])), np.float64))
        tick()
    mass_rlbht = np.concatenate(masses, axis=2)
    rows_rbt = patterns_rbts.any(-1)  # the queries that have a key of the role
    scores = (mass_rlbht * rows_rbt[:, None, :, None]).sum((2, 4)) / rows_rbt.sum((1, 2))[:, None, None]
    return dict(zip(ROLES, scores))
