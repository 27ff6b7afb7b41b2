"""The whole GPT-2, top-down: embeddings, pre-LayerNorm blocks, tied unembedding, KV cache.

Dimension key, reused in einsum strings, logical sharding names and array suffixes:
  B batch   T time (queries)   S time (keys/values)   D model width (n_embd)
  H heads   K head size        F MLP width (4·D)      V vocabulary (n_vocab)
  N tokens, B·T flattened          C the three attention projections: query, key, value

Inside a block every projection is a 2-D matmul over N tokens (x_nd · w_df). Given einsums
over [B, T, D], XLA's CPU backend transposes whole activations around the matmuls of the
backward pass, and the CPU recipe's step took 1.5x as long (BENCHMARKS.md). Blocks still
take and return x_btd, so the residual stream reads as batch × time.

Every parameter carries its logical axis names (`axes=`), and the main activations are
pinned by logical names too (`constrain`); sharding.py maps both to the device mesh in one
table, so nothing here knows about devices.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from gptjax.config import ModelConfig
from gptjax.sharding import constrain

KVCache = list[dict[str, jax.Array]]  # per layer: {"k": k_bshk, "v": v_bshk}
BTD = ("batch", None, "act_embed")  # logical axes of the residual stream


def normal(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str | None, ...], std: float) -> nnx.Param:
    """A float32 weight drawn from N(0, std²), tagged with its logical axis names."""
    # Drawn flat, then shaped: the same numbers (threefry numbers the elements in row-major
    # order either way), but XLA:CPU compiles a 1-D draw 3x faster than a 2- or 3-D one,
    # and the draws were half the compile time of a small run.
    flat = jax.random.normal(next_key(rngs.params), (math.prod(shape),), jnp.float32)
    return nnx.Param(std * flat.reshape(shape), axes=axes)


def next_key(stream: nnx.RngStream) -> jax.Array:
    """The key `stream()` returns, at a constant cost while tracing.

    nnx's own call stores the new count with `count[...] =`, which asks the traced count for
    its `.sharding`; jax answers with an error whose message scans the whole trace so far, so
    building a model under eval_shape or jit took time quadratic in its number of weights
    (21 s for gpt3's shapes). `set_value` stores the count without asking.
    """
    key = jax.random.fold_in(stream.key[...], stream.count[...])
    stream.count.set_value(stream.count[...] + 1)
    return key


def constant(shape: tuple[int, ...], axes: tuple[str | None, ...], value: float, enabled: bool = True):
    """A float32 bias or gain filled with `value`; None when the config turns biases off."""
    return nnx.Param(jnp.full(shape, value, jnp.float32), axes=axes) if enabled else None


def add_bias(y, b: nnx.Param | None):
    return y if b is None else y + b[...].astype(y.dtype)


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
        T = idx_bt.shape[1]
        positions = jax.lax.dynamic_slice_in_dim(self.wpe_td[...], pos, T)
        # Look tokens up in the whole table (gathered, as FSDP does for every weight it uses):
        # on a split table XLA gathers the batch's activations instead to scatter the gradient.
        wte_vd = constrain(self.wte_vd[...], ("vocab", None))
        x_btd = (wte_vd[idx_bt] + positions).astype(self.dtype)
        x_btd = constrain(self.drop(x_btd, rngs=rngs, deterministic=rngs is None), BTD)
        new_cache = []
        for i, block in enumerate(self.blocks):
            x_btd, layer_cache = block(x_btd, rngs=rngs, cache=None if cache is None else cache[i], pos=pos)
            new_cache.append(layer_cache)
        B, T, D = x_btd.shape
        return self.ln_f(x_btd.reshape(B * T, D)).reshape(B, T, D), (None if cache is None else new_cache)

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
        deterministic = rngs is None
        B, T, D = x_btd.shape
        x_nd = x_btd.reshape(B * T, D)
        attn_nd, cache = self.attn(self.ln_1(x_nd), T, cache=cache, pos=pos)
        x_nd = x_nd + self.drop(attn_nd, rngs=rngs, deterministic=deterministic)
        x_nd = x_nd + self.drop(self.mlp(self.ln_2(x_nd)), rngs=rngs, deterministic=deterministic)
        return constrain(x_nd.reshape(B, T, D), BTD), cache


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

    def __call__(self, x_nd, T: int, *, cache=None, pos=0):
        """Attention over sequences of T tokens (x_nd holds N = B·T); returns out_nd."""
        if cache is None:
            q_bthk, k_bshk, v_bshk = self._project_qkv(x_nd, T)
            out_bthk = causal_attention(q_bthk, k_bshk, v_bshk)
        else:
            # Decoding reads every weight once per token, and a stacked copy made per token
            # would add to that traffic (cached sampling ran 1.4x slower): three projections.
            q_bthk, k_bshk, v_bshk = (self._project(x_nd, T, w_dhk, b_hk) for w_dhk, b_hk in
                                      ((self.wq_dhk, self.bq_hk), (self.wk_dhk, self.bk_hk), (self.wv_dhk, self.bv_hk)))
            # Write this chunk's keys/values at pos, then attend over the whole fixed-size
            # cache; the mask hides slots past each query's own position.
            k_bshk = jax.lax.dynamic_update_slice_in_dim(cache["k"], k_bshk.astype(cache["k"].dtype), pos, axis=1)
            v_bshk = jax.lax.dynamic_update_slice_in_dim(cache["v"], v_bshk.astype(cache["v"].dtype), pos, axis=1)
            cache = {"k": k_bshk, "v": v_bshk}
            S = k_bshk.shape[1]
            mask = (jnp.arange(S)[None, :] <= pos + jnp.arange(T)[:, None])[None, None]
            out_bthk = jax.nn.dot_product_attention(q_bthk, k_bshk.astype(self.dtype), v_bshk.astype(self.dtype),
                                                    mask=mask)
        out_nhk = out_bthk.reshape(-1, *out_bthk.shape[2:])
        out_nd = jnp.einsum("nhk,hkd->nd", out_nhk, self.wo_hkd[...].astype(self.dtype))
        return add_bias(out_nd, self.bo_d), cache

    def _project(self, x_nd, T, w_dhk, b_hk):
        y_nhk = add_bias(jnp.einsum("nd,dhk->nhk", x_nd, w_dhk[...].astype(self.dtype)), b_hk)
        return constrain(y_nhk.reshape(-1, T, *y_nhk.shape[1:]), ("batch", None, "act_heads", None))

    def _project_qkv(self, x_nd, T):
        # One [D, 3·H·K] matmul instead of three [D, H·K] ones: on the baby GPT's CPU step the
        # wider product (and its gradients) ran 1.1x faster end to end. The weights stay
        # separate parameters (checkpoints and GPT-2 imports are unchanged); stacking them
        # costs one small copy per step.
        w_dchk = jnp.stack([self.wq_dhk[...], self.wk_dhk[...], self.wv_dhk[...]], axis=1)
        y_nchk = jnp.einsum("nd,dchk->nchk", x_nd, w_dchk.astype(self.dtype))
        if self.bq_hk is not None:
            y_nchk = y_nchk + jnp.stack([self.bq_hk[...], self.bk_hk[...], self.bv_hk[...]]).astype(y_nchk.dtype)
        y_btchk = y_nchk.reshape(-1, T, *y_nchk.shape[1:])
        return [constrain(y_btchk[:, :, c], ("batch", None, "act_heads", None)) for c in range(3)]


def causal_attention(q_bthk, k_bshk, v_bshk, block: int = 64):
    """softmax(QKᵀ/√K)V where each query sees the keys up to its own position.

    Accelerators take `jax.nn.dot_product_attention`: cuDNN's flash attention on GPUs that
    support it, XLA's fused attention elsewhere. On CPU, queries go in blocks of `block`
    (more for long contexts, so the unrolled loop stays short), each attending only to the
    keys at or before its last position: the masked half of the score matrix is never
    computed, in the forward pass or the backward. With heads moved ahead of time once, the
    baby GPT's CPU step ran 1.14x faster than through `dot_product_attention`.
    """
    if jax.default_backend() != "cpu":
        return jax.nn.dot_product_attention(q_bthk, k_bshk, v_bshk, is_causal=True)
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


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, dtype, *, rngs: nnx.Rngs):
        D, F = cfg.n_embd, cfg.mlp_dim
        self.dtype = dtype
        self.w_up_df = normal(rngs, (D, F), ("embed", "mlp"), 0.02)
        self.w_down_fd = normal(rngs, (F, D), ("mlp", "embed"), 0.02 / (2 * cfg.n_layer) ** 0.5)
        self.b_up_f = constant((F,), ("mlp",), 0.0, cfg.bias)
        self.b_down_d = constant((D,), ("embed",), 0.0, cfg.bias)

    def __call__(self, x_nd):
        h_nf = add_bias(jnp.einsum("nd,df->nf", x_nd, self.w_up_df[...].astype(self.dtype)), self.b_up_f)
        h_nf = constrain(jax.nn.gelu(h_nf, approximate=True), ("batch", "act_mlp"))  # GPT-2's tanh GELU
        return add_bias(jnp.einsum("nf,fd->nd", h_nf, self.w_down_fd[...].astype(self.dtype)), self.b_down_d)


class LayerNorm(nnx.Module):
    def __init__(self, cfg: ModelConfig):
        self.scale_d = constant((cfg.n_embd,), ("embed",), 1.0)
        self.bias_d = constant((cfg.n_embd,), ("embed",), 0.0, cfg.bias)

    def __call__(self, x_nd):
        # Statistics in float32 whatever the compute dtype: bf16 variance is too coarse.
        x = x_nd.astype(jnp.float32)
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + 1e-5) * self.scale_d[...]
        return add_bias(y, self.bias_d).astype(x_nd.dtype)


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
