"""A hand-built induction circuit: a model whose heads' roles are known, for the tools that should find them."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from gptjax import config
from gptjax.model import GPT

# A hand-built two-layer induction circuit over 8 tokens and 16 positions, each a one-hot
# direction of the residual stream:
#   layer 0 head 0: previous-token head; writes the previous token into the PREV directions;
#   layer 0 head 1: duplicate-token head (same token, never itself), whose W_O is zero;
#   layer 1 head 0: induction head; attends where the previous token is the current one and
#                   copies that position's token, strongly, into the prediction;
#   layer 1 head 1 and both MLPs: all zero.
# Token 0 starts every sequence.
# SINK is a direction the stream never uses: its rows make every W_Q, W_K, W_V column sum to
# zero, so LayerNorm's mean subtraction cancels and each head reads its input scaled only.
V, T = 8, 16
TOK, POS, PREV, SINK = 0, V, V + T, 2 * V + T
HAND = config.ModelConfig(n_vocab=V, n_ctx=T, n_embd=64, n_head=2, n_layer=2, bias=False)


def _read(w_dhk, head, rows, cols, value):
    for r, c in zip(rows, cols):
        w_dhk[r, head, c] += value
    w_dhk[SINK, head] = -w_dhk[:SINK, head].sum(0)  # each column sums to zero (see SINK)


def induction_model() -> GPT:
    model = GPT(HAND, rngs=nnx.Rngs(0))
    D, K = HAND.n_embd, HAND.head_dim
    eye = np.eye(D, dtype=np.float32)
    model.wte_vd[...] = jnp.asarray(eye[TOK:TOK + V])
    model.wpe_td[...] = jnp.asarray(eye[POS:POS + T])
    ts, vs = range(T), range(V)
    weights = [{name: np.zeros((D, 2, K), np.float32) for name in ("q", "k", "v")} for _ in range(2)]
    wo = [np.zeros((2, K, D), np.float32) for _ in range(2)]
    l0, l1 = weights
    _read(l0["q"], 0, [POS + t for t in ts], ts, 2.0)  # query t matches key t - 1
    _read(l0["k"], 0, [POS + t for t in ts[:-1]], ts[1:], 2.0)
    _read(l0["v"], 0, [TOK + v for v in vs], vs, 1.0)
    wo[0][0, :V, PREV:PREV + V] = np.eye(V) / 5.75  # undo ln_1's scale: PREV holds about one
    l0["q"][TOK:TOK + V, 1, :V] = 2 * np.eye(V)  # same token: +, same position: -
    l0["q"][POS:POS + T, 1, V:V + T] = -2 * np.eye(T)
    l0["k"][TOK:TOK + V, 1, :V] = 2 * np.eye(V)
    l0["k"][POS:POS + T, 1, V:V + T] = 2 * np.eye(T)
    for w in (l0["q"], l0["k"]):
        w[SINK, 1] = -w[:SINK, 1].sum(0)
    _read(l1["q"], 0, [TOK + v for v in vs], vs, 2.5)  # query token v matches keys whose previous token is v
    _read(l1["k"], 0, [PREV + v for v in vs], vs, 2.5)
    # A query with no match attends to the start token (a score half a match's) and reads nothing there.
    _read(l1["q"], 0, [POS + t for t in ts], [V] * T, 1.75)
    _read(l1["k"], 0, [POS], [V], 1.75)
    _read(l1["v"], 0, [TOK + v for v in vs[1:]], vs[1:], 1.0)
    wo[1][0, :V, TOK:TOK + V] = 2.0 * np.eye(V)
    for block, w, o in zip(model.blocks, weights, wo):
        block.attn.wq_dhk[...], block.attn.wk_dhk[...], block.attn.wv_dhk[...] = (jnp.asarray(w[c]) for c in "qkv")
        block.attn.wo_hkd[...] = jnp.asarray(o)
        block.mlp.w_up_df[...] = jnp.zeros_like(block.mlp.w_up_df[...])
        block.mlp.w_down_fd[...] = jnp.zeros_like(block.mlp.w_down_fd[...])
    return model
