"""Causal self-attention kernels, behind one function: softmax(QKᵀ/√K)V with each query seeing its past."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def attention(q_bthk: jax.Array, k_bshk: jax.Array, v_bshk: jax.Array, q_pos: jax.Array | int | None = None):
    """Each query attends to the keys at or before its own position.

    Training passes the whole sequence (q_pos None: query t sits at position t). Decoding
    passes T new queries placed at q_pos..q_pos+T-1 and a fixed-size cache of S keys, whose
    slots past a query's position are hidden.
    """
    if q_pos is not None:
        T, S = q_bthk.shape[1], k_bshk.shape[1]
        visible_ts = jnp.arange(S)[None, :] <= q_pos + jnp.arange(T)[:, None]
        return jax.nn.dot_product_attention(q_bthk, k_bshk, v_bshk, mask=visible_ts[None, None])
    if jax.default_backend() == "cpu":
        return blocked_causal_attention(q_bthk, k_bshk, v_bshk)
    # cuDNN's flash attention on GPUs that support it, XLA's fused attention elsewhere.
    return jax.nn.dot_product_attention(q_bthk, k_bshk, v_bshk, is_causal=True)


def attention_weights(q_bthk: jax.Array, k_bshk: jax.Array, q_pos: jax.Array | int | None = None) -> jax.Array:
    """softmax(QKᵀ/√K) of each head (float32, probs_bhts), masked as `attention` masks: the weights the
    kernels apply but never return, which looking inside the model (gptjax.look) needs."""
    T, S, K = q_bthk.shape[1], k_bshk.shape[1], q_bthk.shape[3]
    q_bthk = q_bthk * jnp.asarray(K ** -0.5, q_bthk.dtype)  # scaled first, as the kernels do
    scores_bhts = jnp.einsum("bthk,bshk->bhts", q_bthk, k_bshk, preferred_element_type=jnp.float32)
    visible_ts = jnp.arange(S)[None, :] <= (0 if q_pos is None else q_pos) + jnp.arange(T)[:, None]
    return jax.nn.softmax(jnp.where(visible_ts, scores_bhts, -jnp.inf), axis=-1)


def blocked_causal_attention(q_bthk, k_bshk, v_bshk, block: int = 64):
    """Causal attention in query blocks that never compute (or differentiate) the masked scores.

    Each block of `block` queries meets only the keys up to its last position, so about half
    of the score matrix is skipped; long contexts get wider blocks so the unrolled loop stays
    at most 8 blocks long. XLA:CPU has no fused attention kernel, so this is its fast path.
    """
    T, K = q_bthk.shape[1], q_bthk.shape[3]
    block = max(block, -(-T // 8))
    q_bhtk, k_bhsk, v_bhsk = (x.transpose(0, 2, 1, 3) for x in (q_bthk, k_bshk, v_bshk))
    q_bhtk = q_bhtk * jnp.asarray(K ** -0.5, q_bhtk.dtype)
    outs = []
    for start in range(0, T, block):
        end = min(start + block, T)
        scores_bhts = jnp.einsum("bhtk,bhsk->bhts", q_bhtk[:, :, start:end], k_bhsk[:, :, :end],
                                 preferred_element_type=jnp.float32)
        visible_ts = jnp.arange(end)[None, :] <= jnp.arange(start, end)[:, None]
        probs_bhts = jax.nn.softmax(jnp.where(visible_ts, scores_bhts, -jnp.inf), axis=-1)
        outs.append(jnp.einsum("bhts,bhsk->bhtk", probs_bhts.astype(v_bhsk.dtype), v_bhsk[:, :, :end]))
    return jnp.concatenate(outs, axis=2).transpose(0, 2, 1, 3)
