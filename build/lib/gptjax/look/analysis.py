"""Looking inside a GPT: parameter accounting, next-token distributions, attention maps,
embedding geometry and the logit lens, as pure functions that return arrays and rows.

Everything reuses the model's own modules and parameters (`model.blocks`, `block.ln_1`,
`attn.wq_dhk`, `model.ln_f`, `model.unembed`), so what is shown is what the model computes;
tests check each piece against the model's own forward pass. Printing and plotting live
in gptjax/inspect.py. Arrays for one prompt drop the batch axis (`attn_lhts`, `logits_ltv`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gptjax.model import GPT, add_bias

# ---------------------------------------------------------------------------
# Parameter accounting

# Parameter path (below a block, or at the top) -> the group it is counted in; a weight
# and its bias share a group. The order here is the order of the table.
GROUPS = {
    "wte_vd": "token embedding W_E",
    "wpe_td": "position embedding W_P",
    "ln_1": "LayerNorm ln_1",
    "attn.wq_dhk": "query W_Q", "attn.bq_hk": "query W_Q",
    "attn.wk_dhk": "key W_K", "attn.bk_hk": "key W_K",
    "attn.wv_dhk": "value W_V", "attn.bv_hk": "value W_V",
    "attn.wo_hkd": "output W_O", "attn.bo_d": "output W_O",
    "ln_2": "LayerNorm ln_2",
    "mlp.w_up_df": "MLP up W_in", "mlp.b_up_f": "MLP up W_in",
    "mlp.w_down_fd": "MLP down W_out", "mlp.b_down_d": "MLP down W_out",
    "ln_f": "final LayerNorm ln_f",
    "wu_dv": "unembedding W_U",  # the name an untied unembedding would carry
}
ORDER = list(dict.fromkeys(GROUPS.values()))
TIED_UNEMBEDDING = "unembedding W_U (tied: W_E transposed)"


@dataclasses.dataclass(frozen=True)
class ParamGroup:
    name: str
    layer: int | None  # block index; None outside the blocks
    shapes: tuple[tuple[int, ...], ...]  # weight first, then its bias
    count: int  # 0 for a tied matrix: its weights are already counted in W_E


def _group_of(path: tuple) -> tuple[int | None, str]:
    layer = path[1] if path[0] == "blocks" else None
    rest = path[2:] if layer is not None else path
    key = ".".join(map(str, rest))
    # LayerNorm parameters (scale_d, bias_d) group under their module; an unknown
    # parameter keeps its own name, so the total stays the model's real count.
    return layer, GROUPS.get(key) or GROUPS.get(str(rest[0])) or key


def param_groups(model: nnx.Module) -> list[ParamGroup]:
    """Every parameter of `model` (real or from nnx.eval_shape), grouped and ordered as the forward pass meets them."""
    shapes: dict[tuple[int | None, str], list[tuple[int, ...]]] = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        shapes.setdefault(_group_of(path), []).append(tuple(var.get_value().shape))
    groups = [ParamGroup(name, layer, tuple(sorted(s, key=len, reverse=True)), sum(int(np.prod(x)) for x in s))
              for (layer, name), s in shapes.items()]
    if not any(g.name == "unembedding W_U" for g in groups):
        v, d = model.wte_vd.get_value().shape
        groups.append(ParamGroup(TIED_UNEMBEDDING, None, ((d, v),), 0))

    def place(g: ParamGroup):
        # Embeddings, then the blocks in order, then ln_f and W_U.
        stage = 1 if g.layer is not None else (0 if g.name in (GROUPS["wte_vd"], GROUPS["wpe_td"]) else 2)
        rank = ORDER.index(g.name) if g.name in ORDER else len(ORDER)
        return stage, g.layer or 0, rank, g.name
    return sorted(groups, key=place)


def layer_totals(groups: list[ParamGroup]) -> dict[int, int]:
    totals: dict[int, int] = {}
    for g in groups:
        if g.layer is not None:
            totals[g.layer] = totals.get(g.layer, 0) + g.count
    return totals


# ---------------------------------------------------------------------------
# The forward pass, one stage at a time


def prompt_ids(tokenizer, text: str, n_ctx: int) -> list[int]:
    """The tokens the model sees for `text`: as the sampler, the last n_ctx; an empty prompt starts a document."""
    ids = tokenizer.encode(text) if text else list(tokenizer.bos_ids)
    return ids[-n_ctx:]


def embed(model: GPT, idx_bt: jax.Array) -> jax.Array:
    """Token plus position embeddings, as the first lines of `GPT.hidden` (no dropout)."""
    T = idx_bt.shape[1]
    return (model.wte_vd[...][idx_bt] + model.wpe_td[...][:T]).astype(model.dtype)


def residual_stream(model: GPT, idx_bt: jax.Array) -> list[jax.Array]:
    """The residual stream after the embeddings and after each block: n_layer + 1 arrays x_btd."""
    xs = [embed(model, idx_bt)]
    for block in model.blocks:
        xs.append(block(xs[-1])[0])
    return xs


def attention_probs(attn, x_btd: jax.Array) -> jax.Array:
    """softmax(QKᵀ/√K) with the causal mask, from the layer's own W_Q, W_K and biases.

    `x_btd` is the attention layer's input (the block's ln_1 output). The model's own attention
    (`model.attention`) never returns these weights, so they are recomputed.
    """
    dtype = attn.dtype
    q_bthk = add_bias(jnp.einsum("btd,dhk->bthk", x_btd, attn.wq_dhk[...].astype(dtype)), attn.bq_hk)
    # b_K shifts a whole row of scores by q·b_K, which softmax ignores; kept so the scores are the model's own.
    k_bshk = add_bias(jnp.einsum("btd,dhk->bthk", x_btd, attn.wk_dhk[...].astype(dtype)), attn.bk_hk)
    scores_bhts = jnp.einsum("bthk,bshk->bhts", q_bthk, k_bshk,
                             preferred_element_type=jnp.float32) / jnp.sqrt(q_bthk.shape[-1])
    T, S = scores_bhts.shape[-2:]
    causal_ts = jnp.arange(S)[None, :] <= jnp.arange(T)[:, None]
    return jax.nn.softmax(jnp.where(causal_ts, scores_bhts, -jnp.inf), axis=-1)


def attention_maps(model: GPT, ids: list[int]) -> np.ndarray:
    """Every layer's and head's attention weights for one prompt: attn_lhts (rows: queries, columns: keys)."""
    return np.asarray(_attention_maps(model, jnp.asarray([ids], jnp.int32))[0])


def logit_lens(model: GPT, ids: list[int]) -> np.ndarray:
    """Next-token logits read off the residual stream after the embeddings and after each block,
    through the model's own ln_f and tied unembedding: logits_ltv with n_layer + 1 rows.
    The last row is exactly the model's output."""
    return np.asarray(_logit_lens(model, jnp.asarray([ids], jnp.int32))[0])


def next_logits(model: GPT, ids: list[int], vocab_size: int) -> np.ndarray:
    """The model's logits for the token after `ids`, over the tokenizer's real vocabulary (padding dropped)."""
    return np.asarray(_forward(model, jnp.asarray([ids], jnp.int32))[0, -1, :vocab_size])


# Compiled once per prompt length: op-by-op execution would compile every op separately.
@nnx.jit
def _attention_maps(model: GPT, idx_bt: jax.Array) -> jax.Array:
    xs = residual_stream(model, idx_bt)
    return jnp.stack([attention_probs(block.attn, block.ln_1(x_btd)) for block, x_btd in zip(model.blocks, xs)], 1)


@nnx.jit
def _logit_lens(model: GPT, idx_bt: jax.Array) -> jax.Array:
    return jnp.stack([model.unembed(model.ln_f(x_btd)) for x_btd in residual_stream(model, idx_bt)], 1)


@nnx.jit
def _forward(model: GPT, idx_bt: jax.Array) -> jax.Array:
    return model(idx_bt)


def softmax_at(logits_v: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / T) over the last axis; T = 0 is the limit T -> 0: all mass on the argmax
    (split evenly between exact ties)."""
    logits_v = np.asarray(logits_v, np.float64)
    peak = logits_v.max(axis=-1, keepdims=True)
    if temperature == 0:
        top = logits_v == peak
        return top / top.sum(axis=-1, keepdims=True)
    p = np.exp((logits_v - peak) / temperature)  # shifted first, so exp never overflows
    return p / p.sum(axis=-1, keepdims=True)


def top_tokens(logits_v: np.ndarray, n: int) -> np.ndarray:
    """The ids of the n largest logits, largest first: the same order at every temperature."""
    return np.argsort(-np.asarray(logits_v), kind="stable")[:n]


# ---------------------------------------------------------------------------
# Embedding geometry


def word_vector(w_vd: np.ndarray, ids: list[int]) -> np.ndarray:
    """A word's vector: its token's embedding row, or the mean of the rows when it is several tokens."""
    return np.asarray(w_vd)[ids].mean(axis=0)


def cosine_nearest(w_vd: np.ndarray, query_d: np.ndarray, k: int, exclude=()) -> list[tuple[int, float]]:
    """The k rows of w_vd closest to `query_d` by cosine similarity, most similar first, skipping `exclude`."""
    w = np.asarray(w_vd, np.float64)
    q = np.asarray(query_d, np.float64)
    sims = w @ q / np.maximum(np.linalg.norm(w, axis=1) * np.linalg.norm(q), 1e-12)
    sims[list(exclude)] = -np.inf
    order = np.argsort(-sims, kind="stable")[:k]
    return [(int(i), float(sims[i])) for i in order if np.isfinite(sims[i])]


def analogy(w_vd: np.ndarray, a: list[int], b: list[int], c: list[int], k: int) -> list[tuple[int, float]]:
    """Nearest tokens to A - B + C (king - man + woman ≈ queen), A's, B's and C's own tokens left out."""
    query = word_vector(w_vd, a) - word_vector(w_vd, b) + word_vector(w_vd, c)
    return cosine_nearest(w_vd, query, k, exclude=set(a) | set(b) | set(c))
