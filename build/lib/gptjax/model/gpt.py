"""The whole GPT-2, top-down: embeddings, pre-LayerNorm blocks, tied unembedding, KV cache.

Dimension key, reused in einsum strings, logical sharding names and array suffixes:
  B batch   T time (queries)   S time (keys/values)   D model width (n_embd)
  H heads   K head size        F MLP width (4·D)      V vocabulary (n_vocab)

Every parameter carries its logical axis names (`axes=`) and the main activations are pinned
by logical names too (`constrain`); sharding.py maps both to the device mesh in one table, so
nothing here knows about devices.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from gptjax.config import ModelConfig
from gptjax.model.attention import attention
from gptjax.model.init import constant, normal
from gptjax.sharding import constrain

KVCache = list[dict[str, jax.Array]]  # per layer: {"k": k_bshk, "v": v_bshk}
BTD = ("batch", None, "act_embed")  # logical axes of the residual stream
BTHK = ("batch", None, "act_heads", None)


class GPT(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        assert cfg.n_vocab is not None, "resolve model.n_vocab from the data before building"
        self.cfg = cfg
        self.dtype = compute_dtype(cfg.compute_dtype)
        self.wte_vd = normal(rngs, (cfg.n_vocab, cfg.n_embd), ("vocab", "embed"), 0.02)
        self.wpe_td = normal(rngs, (cfg.n_ctx, cfg.n_embd), (None, "embed"), 0.02)
        self.drop = nnx.Dropout(cfg.dropout)
        self.blocks = nnx.List([Block(cfg, self.dtype, rngs=rngs) for _ in range(cfg.n_layer)])
        self.ln_f = LayerNorm(cfg)

    def __call__(self, idx_bt: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        """Logits for every position; dropout is on when `rngs` is given."""
        x_btd, _ = self.hidden(idx_bt, rngs=rngs)
        return self.unembed(x_btd)

    def decode(self, idx_bt: jax.Array, cache: KVCache, pos: jax.Array) -> tuple[jax.Array, KVCache]:
        """Logits for tokens placed at positions pos..pos+T-1, attending to the cache."""
        x_btd, cache = self.hidden(idx_bt, cache=cache, pos=pos)
        return self.unembed(x_btd), cache

    def hidden(self, idx_bt, *, rngs=None, cache: KVCache | None = None, pos=0):
        """The final residual stream, normalised: x_btd (and the updated cache when decoding)."""
        positions_td = jax.lax.dynamic_slice_in_dim(self.wpe_td[...], pos, idx_bt.shape[1])
        # Tokens are looked up in the whole table (gathered, as FSDP does for every weight it
        # uses): on a split table XLA would gather the batch's activations to scatter the gradient.
        wte_vd = constrain(self.wte_vd[...], ("vocab", None))
        x_btd = (wte_vd[idx_bt] + positions_td).astype(self.dtype)
        x_btd = constrain(dropout(self.drop, x_btd, rngs), BTD)
        new_cache = []
        for i, block in enumerate(self.blocks):
            x_btd, layer_cache = block(x_btd, rngs=rngs, cache=None if cache is None else cache[i], pos=pos)
            new_cache.append(layer_cache)
        return self.ln_f(x_btd), (None if cache is None else new_cache)

    def unembed(self, x_btd: jax.Array) -> jax.Array:
        # Tied weights: W_U = W_Eᵀ. Logits come out float32 for a stable softmax.
        B, T, D = x_btd.shape
        logits_nv = jnp.einsum("nd,vd->nv", x_btd.reshape(B * T, D), self.wte_vd[...].astype(self.dtype),
                               preferred_element_type=jnp.float32)
        return constrain(logits_nv.reshape(B, T, -1), ("batch", None, "act_vocab"))


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, dtype, *, rngs: nnx.Rngs):
        self.ln_1 = LayerNorm(cfg)
        self.attn = Attention(cfg, dtype, rngs=rngs)
        self.ln_2 = LayerNorm(cfg)
        self.mlp = MLP(cfg, dtype, rngs=rngs)
        self.drop = nnx.Dropout(cfg.dropout)

    def __call__(self, x_btd, *, rngs=None, cache=None, pos=0):
        attn_btd, cache = self.attn(self.ln_1(x_btd), cache=cache, pos=pos)
        x_btd = x_btd + dropout(self.drop, attn_btd, rngs)
        x_btd = x_btd + dropout(self.drop, self.mlp(self.ln_2(x_btd)), rngs)
        return constrain(x_btd, BTD), cache


class Attention(nnx.Module):
    """Causal multi-head self-attention: softmax(QKᵀ/√K)V per head, heads projected by W_O."""

    def __init__(self, cfg: ModelConfig, dtype, *, rngs: nnx.Rngs):
        D, H, K = cfg.n_embd, cfg.n_head, cfg.head_dim
        residual_std = 0.02 / (2 * cfg.n_layer) ** 0.5  # GPT-2: keep the residual stream's variance flat in depth
        self.dtype = dtype
        self.wq_dhk = normal(rngs, (D, H, K), ("embed", "heads", "head_dim"), 0.02)
        self.wk_dhk = normal(rngs, (D, H, K), ("embed", "heads", "head_dim"), 0.02)
        self.wv_dhk = normal(rngs, (D, H, K), ("embed", "heads", "head_dim"), 0.02)
        self.wo_hkd = normal(rngs, (H, K, D), ("heads", "head_dim", "embed"), residual_std)
        self.bq_hk = constant((H, K), ("heads", "head_dim"), 0.0, cfg.bias)
        self.bk_hk = constant((H, K), ("heads", "head_dim"), 0.0, cfg.bias)
        self.bv_hk = constant((H, K), ("heads", "head_dim"), 0.0, cfg.bias)
        self.bo_d = constant((D,), ("embed",), 0.0, cfg.bias)

    def __call__(self, x_btd, *, cache=None, pos=0):
        q_bthk, k_bshk, v_bshk = self.qkv(x_btd)
        if cache is not None:  # decoding: write this chunk's keys and values at pos, attend over all slots
            k_bshk, v_bshk = (jax.lax.dynamic_update_slice_in_dim(cache[name], new.astype(cache[name].dtype), pos, 1)
                              for name, new in (("k", k_bshk), ("v", v_bshk)))
            cache = {"k": k_bshk, "v": v_bshk}
        out_bthk = attention(q_bthk, k_bshk.astype(self.dtype), v_bshk.astype(self.dtype),
                             None if cache is None else pos)
        return self.out(out_bthk), cache

    def qkv(self, x_btd):
        """Queries, keys and values per head: q_bthk, k_bthk, v_bthk."""
        return [constrain(dense(x_btd, w, b, self.dtype), BTHK)
                for w, b in ((self.wq_dhk, self.bq_hk), (self.wk_dhk, self.bk_hk), (self.wv_dhk, self.bv_hk))]

    def out(self, o_bthk):
        """The heads' outputs, concatenated and projected back to the residual stream by W_O."""
        return dense(o_bthk, self.wo_hkd, self.bo_d, self.dtype, contract=2)


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, dtype, *, rngs: nnx.Rngs):
        D, F = cfg.n_embd, cfg.mlp_dim
        self.dtype = dtype
        self.w_up_df = normal(rngs, (D, F), ("embed", "mlp"), 0.02)
        self.w_down_fd = normal(rngs, (F, D), ("mlp", "embed"), 0.02 / (2 * cfg.n_layer) ** 0.5)
        self.b_up_f = constant((F,), ("mlp",), 0.0, cfg.bias)
        self.b_down_d = constant((D,), ("embed",), 0.0, cfg.bias)

    def __call__(self, x_btd):
        h_btf = jax.nn.gelu(dense(x_btd, self.w_up_df, self.b_up_f, self.dtype), approximate=True)  # GPT-2's GELU
        return dense(constrain(h_btf, ("batch", None, "act_mlp")), self.w_down_fd, self.b_down_d, self.dtype)


class LayerNorm(nnx.Module):
    def __init__(self, cfg: ModelConfig):
        self.scale_d = constant((cfg.n_embd,), ("embed",), 1.0)
        self.bias_d = constant((cfg.n_embd,), ("embed",), 0.0, cfg.bias)

    def __call__(self, x_btd):
        # Statistics in float32 whatever the compute dtype: bf16 variance is too coarse.
        x = x_btd.astype(jnp.float32)
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + 1e-5) * self.scale_d[...]
        return add_bias(y, self.bias_d).astype(x_btd.dtype)


def dense(x, w: nnx.Param, b: nnx.Param | None, dtype, contract: int = 1):
    """x·W + b: x's last `contract` axes against W's first ones, e.g. x_btd·w_dhk -> y_bthk.

    Computed as one 2-D matmul over all B·T tokens: given 3-D operands, XLA:CPU transposes
    whole activations around the backward matmuls (a 1.5x slower step, BENCHMARKS.md).
    """
    lead, inner = x.shape[:-contract], math.prod(w.shape[:contract])
    y = x.reshape(-1, inner) @ w[...].reshape(inner, -1).astype(dtype)
    return add_bias(y.reshape(*lead, *w.shape[contract:]), b)


def add_bias(y, b: nnx.Param | None):
    return y if b is None else y + b[...].astype(y.dtype)


def dropout(drop: nnx.Dropout, x, rngs: nnx.Rngs | None):
    """Dropout while training (rngs given); the identity otherwise."""
    return drop(x, rngs=rngs, deterministic=rngs is None)


def abstract_model(cfg: ModelConfig) -> GPT:
    """The model's structure, shapes and dtypes without drawing a single weight (GPT-3 costs nothing)."""
    return nnx.eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(0)))


def compute_dtype(name: str):
    """bfloat16 on accelerators and float32 on CPU for "auto"; parameters stay float32 regardless."""
    if name == "auto":
        name = "float32" if jax.default_backend() == "cpu" else "bfloat16"
    return jnp.dtype(name)


def init_cache(cfg: ModelConfig, batch: int, dtype=jnp.float32) -> KVCache:
    shape = (batch, cfg.n_ctx, cfg.n_head, cfg.head_dim)
    return [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(cfg.n_layer)]


def count_params(model: nnx.Module) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
