"""Looking deeper: the cached and patched forward pass, head knock-outs, head roles, logit attribution, the report."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gptjax import config
from gptjax.look import attribution, heads, hooks
from gptjax.model import GPT
from tests.test_inspect import randomized

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


@pytest.fixture(scope="module")
def hand():
    return induction_model()


def repeated(batch=8, seed=0):
    idx_bt = heads.repeated_sequences(V, T, [0], batch, seed)
    return [(idx_bt[:, :-1], idx_bt[:, 1:])], idx_bt


# ---------------------------------------------------------------------------
# The forward pass


def test_forward_with_no_patch_is_the_models_own():
    cfg = config.ModelConfig(n_vocab=11, n_ctx=12, n_embd=16, n_head=4, n_layer=3)
    model = randomized(cfg)
    idx_bt = jax.random.randint(jax.random.PRNGKey(0), (2, 12), 0, 11)
    logits_btv, cache = hooks.run_with_cache(model, idx_bt)
    np.testing.assert_allclose(logits_btv, model(idx_bt), atol=1e-5)
    assert cache.resid_lbtd.shape == (4, 2, 12, 16) and cache.z_lbthk.shape == (3, 2, 12, 4, 4)
    # The stream is the sum of its parts: embeddings plus every sublayer's output.
    parts = cache.tok_btd + cache.pos_td + cache.attn_out_lbtd.sum(0) + cache.mlp_out_lbtd.sum(0)
    np.testing.assert_allclose(cache.resid_lbtd[-1], parts, atol=1e-5)


def test_patching_a_head_with_another_runs_output_moves_the_logits_there():
    model = randomized(config.ModelConfig(n_vocab=11, n_ctx=12, n_embd=16, n_head=4, n_layer=1))
    a_bt, b_bt = (jax.random.randint(jax.random.PRNGKey(i), (1, 12), 0, 11) for i in (1, 2))
    _, cache_b = hooks.run_with_cache(model, b_bt)
    patch = hooks.Patch.identity(model.cfg)
    for h in range(4):
        patch = patch.patch_head(0, h, cache_b)
    _, cache_a = hooks.run_with_cache(model, a_bt, patch)
    # Every head of the only layer patched from b: layer 0's attention output is b's.
    np.testing.assert_allclose(cache_a.attn_out_lbtd, cache_b.attn_out_lbtd, atol=1e-6)


# ---------------------------------------------------------------------------
# Knock-outs and roles, on the hand-built circuit


@pytest.mark.parametrize("ablation", heads.ABLATIONS)
def test_knocking_out_the_circuit_raises_the_loss_and_zeroed_parts_change_nothing(hand, ablation):
    batches, _ = repeated()
    k = heads.knockouts(hand, batches, ablation)
    # Every prediction of the repeat goes through the previous-token head, then the induction head.
    assert k.heads_lh[0, 0] > 1.0 and k.heads_lh[1, 0] > 0.5 and k.attn_l[0] > 1.0
    # Heads whose W_O is zero and MLPs whose weights are: their knock-out is the same program's
    # same arithmetic, so the loss is the same to the last bit.
    assert k.heads_lh[0, 1] == 0.0 and k.heads_lh[1, 1] == 0.0
    assert (k.mlp_l == 0.0).all()
    if ablation == "zero":  # with the other head of the layer silent, the layer is its one head
        assert k.attn_l[1] == k.heads_lh[1, 0]


def test_hand_built_heads_score_highest_on_their_roles(hand):
    _, idx_bt = repeated(batch=4, seed=1)
    scores = heads.role_scores(hand, idx_bt)
    best = {role: np.unravel_index(s.argmax(), s.shape) for role, s in scores.items()}
    assert best == {"previous-token": (0, 0), "duplicate-token": (0, 1), "induction": (1, 0)}
    assert scores["induction"][1, 0] > 0.95 and np.delete(scores["induction"].ravel(), 2).max() < 0.2


def test_repeated_sequences_repeat_distinct_tokens_after_the_start_token():
    idx_bt = heads.repeated_sequences(65, 64, [0], 3, seed=0)
    assert idx_bt.shape == (3, 63) and (idx_bt[:, 0] == 0).all()
    first, second = idx_bt[:, 1:32], idx_bt[:, 32:]
    assert (first == second).all() and all(len(set(row)) == 31 and 0 not in row for row in first)


# ---------------------------------------------------------------------------
# Direct logit attribution


@pytest.mark.parametrize("position, target", [(-1, 3), (4, 0), (9, 10)])
def test_attributions_sum_to_the_logit_with_the_final_norm_frozen(position, target):
    # Random biases and LayerNorm gains, so a dropped bias or gain would show.
    model = randomized(config.ModelConfig(n_vocab=11, n_ctx=12, n_embd=16, n_head=4, n_layer=3))
    ids = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
    a = attribution.attribute(model, ids, target, position)
    assert a.logit == pytest.approx(float(model(jnp.asarray([ids]))[0, position, target]), abs=1e-5)
    # Exact up to float rounding: ln_f is linear in the stream once σ is frozen at its value.
    assert a.total() == pytest.approx(a.logit, abs=1e-4)
    assert sum(v for _, v in a.rows()) == pytest.approx(a.logit, abs=1e-4)
    assert a.final_bias != 0 and (a.attn_bias_l != 0).all()


def test_the_induction_head_is_what_raises_the_repeated_tokens_logit(hand):
    _, idx_bt = repeated(batch=1, seed=2)
    ids = list(idx_bt[0])
    t = 10  # in the repeat: the next token is the one that followed ids[t] the first time
    a = attribution.attribute(hand, ids[:t + 1], ids[t + 1])
    parts = dict(a.rows())
    assert max(parts, key=parts.get) == "layer 1 head 0" and parts["layer 1 head 0"] > 5
