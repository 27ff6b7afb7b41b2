"""Looking inside a GPT: parameter accounting, next-token distributions, attention maps,
embedding geometry and the logit lens, as pure functions that return arrays and rows.

Nothing here computes a forward pass of its own: the residual stream is the model's
(`GPT.stream`, which its `__call__` runs), attention weights come through its tap (hooks.py),
and the lens reads through its own `ln_f` and `unembed`, so every architecture knob the model
has is in what is shown; tests check each piece against the model's logits on every preset's
architecture. Printing and plotting live in render.py. Arrays for one prompt drop the batch
axis (`attn_lhts`, `logits_ltv`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gptjax.look import hooks
from gptjax.model import GPT

# ---------------------------------------------------------------------------
# Parameter accounting

# Parameter path (below a block, or at the top; a module's path names all its parameters) -> the
# group it is counted in; a weight and its bias share a group. The order here is the order of the
# table, the forward pass's; {norm} is the model's norm, LayerNorm or RMSNorm.
GROUPS = {
    "wte_vd": "token embedding W_E",
    "wpe_td": "position embedding W_P",
    "w_value_evhk": "value embeddings",
    "x0_mix_2": "embedding skip mix λ",
    "ln_1": "{norm} ln_1",
    "attn.wq_dhk": "query W_Q", "attn.bq_hk": "query W_Q",
    "attn.wk_dhk": "key W_K", "attn.bk_hk": "key W_K",
    "attn.wv_dhk": "value W_V", "attn.bv_hk": "value W_V",
    "attn.q_norm": "query norm (QK-norm)", "attn.k_norm": "key norm (QK-norm)",
    "attn.ve_mix_2": "value-embedding mix λ",
    "attn.wo_hkd": "output W_O", "attn.bo_d": "output W_O",
    "ln_2": "{norm} ln_2",
    "mlp.w_up_df": "MLP up W_in", "mlp.b_up_f": "MLP up W_in",
    "mlp.w_gate_df": "MLP gate W_gate", "mlp.b_gate_f": "MLP gate W_gate",
    "mlp.w_down_fd": "MLP down W_out", "mlp.b_down_d": "MLP down W_out",
    "skip_gain_l": "U-net skip gains",
    "ln_f": "final {norm} ln_f",
    "w_unembed_vd": "unembedding W_U",
}
EMBEDDINGS = ("wte_vd", "wpe_td", "w_value_evhk")  # the groups before the blocks
TIED_UNEMBEDDING = "unembedding W_U (tied: W_E transposed)"


@dataclasses.dataclass(frozen=True)
class ParamGroup:
    name: str
    layer: int | None  # block index; None outside the blocks
    shapes: tuple[tuple[int, ...], ...]  # weight first, then its bias
    count: int  # 0 for a tied matrix: its weights are already counted in W_E


def _group_of(path: tuple, norm: str) -> tuple[int | None, str]:
    layer = path[1] if path[0] == "blocks" else None
    rest = tuple(map(str, path[2:] if layer is not None else path))
    # The longest prefix of the path that names a group: a norm's scale_d and bias_d group under it.
    # An unknown parameter keeps its own name, so the total stays the model's real count.
    keys = [".".join(rest[:n]) for n in range(len(rest), 0, -1)]
    return layer, next((GROUPS[k] for k in keys if k in GROUPS), keys[0]).format(norm=norm)


def param_groups(model: nnx.Module) -> list[ParamGroup]:
    """Every parameter of `model` (real or from nnx.eval_shape), grouped and ordered as the forward pass meets them."""
    norm = "LayerNorm" if model.cfg.norm == "layernorm" else "RMSNorm"
    order = list(dict.fromkeys(name.format(norm=norm) for name in GROUPS.values()))
    shapes: dict[tuple[int | None, str], list[tuple[int, ...]]] = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        shapes.setdefault(_group_of(path, norm), []).append(tuple(var.get_value().shape))
    groups = [ParamGroup(name, layer, tuple(sorted(s, key=len, reverse=True)), sum(int(np.prod(x)) for x in s))
              for (layer, name), s in shapes.items()]
    if not any(g.name == GROUPS["w_unembed_vd"] for g in groups):
        v, d = model.wte_vd.get_value().shape
        groups.append(ParamGroup(TIED_UNEMBEDDING, None, ((d, v),), 0))
    first = {GROUPS[k] for k in EMBEDDINGS}

    def place(g: ParamGroup):
        # Embeddings, then the blocks in order, then the rest (ln_f, W_U).
        stage = 1 if g.layer is not None else (0 if g.name in first else 2)
        rank = order.index(g.name) if g.name in order else len(order)
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


def residual_stream(model: GPT, idx_bt: jax.Array) -> list[jax.Array]:
    """The residual stream after the embeddings and after each block: n_layer + 1 arrays x_btd, the model's own."""
    return model.stream(idx_bt)[0]


def attention_maps(model: GPT, ids: list[int]) -> np.ndarray:
    """Every layer's and head's attention weights for one prompt: attn_lhts (rows: queries, columns: keys)."""
    return np.asarray(_attention_maps(model, jnp.asarray([ids], jnp.int32))[0])


def logit_lens(model: GPT, ids: list[int]) -> np.ndarray:
    """Next-token logits read off the residual stream after the embeddings and after each block,
    through the model's own ln_f and unembedding (tied or not, soft-capped if the model is):
    logits_ltv with n_layer + 1 rows. The last row is exactly the model's output."""
    return np.asarray(_logit_lens(model, jnp.asarray([ids], jnp.int32))[0])


def next_logits(model: GPT, ids: list[int], vocab_size: int) -> np.ndarray:
    """The model's logits for the token after `ids`, over the tokenizer's real vocabulary (padding dropped)."""
    return np.asarray(_forward(model, jnp.asarray([ids], jnp.int32))[0, -1, :vocab_size])


# Compiled once per prompt length: op-by-op execution would compile every op separately.
@nnx.jit
def _attention_maps(model: GPT, idx_bt: jax.Array) -> jax.Array:
    _, cache = hooks.forward(model, idx_bt, hooks.Patch.identity(model.cfg))  # only the weights leave the program
    return jnp.moveaxis(cache.probs_lbhts, 0, 1)


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
