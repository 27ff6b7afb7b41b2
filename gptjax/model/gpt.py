"""The whole GPT, top-down: embeddings, pre-norm blocks, unembedding, KV cache (GPT-2 by default).

Dimension key, reused in einsum strings, logical sharding names and array suffixes:
  B batch   T time (queries)   S time (keys/values)   D model width (n_embd)
  H heads   K head size        F MLP width (mlp_dim)  V vocabulary (n_vocab)
Keys and values have G = n_kv_head heads (G = H unless grouped); their `h` names those G.

The architecture knobs (positions, norm, mlp, qk_norm, n_kv_head, tie_embeddings,
logit_softcap, and the speedrun's zero_init_proj, unet_skips, value_embeds, mtp_weight) pick small
parts from layers.py and rope.py; at their defaults the model, its parameter tree and its
random draws are GPT-2's.

Every parameter carries its logical axis names (`axes=`) and the main activations are pinned
by logical names too (`constrain`); sharding.py maps both to the device mesh in one table, so
nothing here knows about devices.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from gptjax.config import ModelConfig
from gptjax.model import rope
from gptjax.model.attention import attention, attention_weights
from gptjax.model.init import constant, normal
from gptjax.model.layers import MLP, RMSNorm, add_bias, dense, norm
from gptjax.sharding import constrain

__all__ = ["GPT", "KVCache", "Tap", "add_bias", "compute_dtype", "count_params", "dense", "init_cache"]

KVCache = list[dict[str, jax.Array]]  # per layer: {"k": k_bshk, "v": v_bshk}
# tap(layer, point, x) -> the x the pass goes on with: how gptjax.look reads and patches the forward pass,
# at "embed" (layer None), then per layer "probs", "z" (each head's output before W_O), "attn_out", "mlp_out"
# and "resid" (the block's output). Without a tap the pass has no extra work at all.
Tap = Callable[[int | None, str, jax.Array], jax.Array]
BTD = ("batch", None, "act_embed")  # logical axes of the residual stream
BTHK = ("batch", None, "act_heads", None)


class GPT(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        assert cfg.n_vocab is not None, "resolve model.n_vocab from the data before building"
        self.cfg = cfg
        self.dtype = compute_dtype(cfg.compute_dtype)
        self.wte_vd = normal(rngs, (cfg.n_vocab, cfg.n_embd), ("vocab", "embed"), 0.02)
        learned = cfg.positions == "learned"  # else rotary, inside attention
        self.wpe_td = normal(rngs, (cfg.n_ctx, cfg.n_embd), (None, "embed"), 0.02) if learned else None
        self.drop = nnx.Dropout(cfg.dropout)
        self.blocks = nnx.List([Block(cfg, self.dtype, i, rngs=rngs) for i in range(cfg.n_layer)])
        self.ln_f = norm(cfg)
        untied = not cfg.tie_embeddings
        self.w_unembed_vd = normal(rngs, (cfg.n_vocab, cfg.n_embd), ("vocab", "embed"), 0.02) if untied else None
        # The speedrun's extras (modded-nanogpt), drawn after every GPT-2 weight so those draw the same numbers.
        self.skip_gain_l = constant((cfg.n_layer // 2,), (None,), 1.0, cfg.unet_skips)
        E, G, K = cfg.value_embeds, cfg.kv_heads, cfg.head_dim
        # At the scale of the values x·W_V they are mixed with (unit-RMS x, 0.02 weights): 0.02·√D.
        self.w_value_evhk = normal(rngs, (E, cfg.n_vocab, G, K), (None, "vocab", "heads", "head_dim"),
                                   0.02 * cfg.n_embd ** 0.5) if E else None
        # Multi-token prediction (model.mtp_weight): one map from the final hidden state to token t+2's.
        self.w_mtp_dd = normal(rngs, (cfg.n_embd, cfg.n_embd), ("embed", None), 0.02) if cfg.mtp_weight else None

    def __call__(self, idx_bt: jax.Array, *, rngs: nnx.Rngs | None = None, tap: Tap | None = None) -> jax.Array:
        """Logits for every position; dropout is on when `rngs` is given."""
        x_btd, _ = self.hidden(idx_bt, rngs=rngs, tap=tap)
        return self.unembed(x_btd)

    def decode(self, idx_bt: jax.Array, cache: KVCache, pos: jax.Array) -> tuple[jax.Array, KVCache]:
        """Logits for tokens placed at positions pos..pos+T-1, attending to the cache."""
        x_btd, cache = self.hidden(idx_bt, cache=cache, pos=pos)
        return self.unembed(x_btd), cache

    def hidden(self, idx_bt, *, rngs=None, cache: KVCache | None = None, pos=0, tap: Tap | None = None):
        """The final residual stream, normalised: x_btd (and the updated cache when decoding)."""
        xs, cache = self.stream(idx_bt, rngs=rngs, cache=cache, pos=pos, tap=tap)
        return self.ln_f(xs[-1]), cache

    def stream(self, idx_bt, *, rngs=None, cache: KVCache | None = None, pos=0, tap: Tap | None = None):
        """The residual stream after the embeddings and after each block: n_layer + 1 arrays x_btd (and the
        updated cache when decoding). The logit lens and every other look inside read it here."""
        at = lambda layer: None if tap is None else functools.partial(tap, layer)
        # Tokens are looked up in the whole table (gathered, as FSDP does for every weight it
        # uses): on a split table XLA would gather the batch's activations to scatter the gradient.
        wte_vd = constrain(self.wte_vd[...], ("vocab", None))
        x_btd = wte_vd[idx_bt]
        if self.wpe_td is not None:
            x_btd = x_btd + jax.lax.dynamic_slice_in_dim(self.wpe_td[...], pos, idx_bt.shape[1])
        x_btd = x_btd.astype(self.dtype)
        x_btd = look(at(None), "embed", constrain(dropout(self.drop, x_btd, rngs), BTD))
        values = self.value_rows(idx_bt)
        x0_btd, outputs, new_cache = x_btd, [], []
        for i, block in enumerate(self.blocks):
            x_btd = self.skip_in(x_btd, i, outputs)
            x_btd, layer_cache = block(x_btd, rngs=rngs, cache=None if cache is None else cache[i], pos=pos,
                                       ve_bthk=values[i], x0_btd=x0_btd, tap=at(i))
            x_btd = look(at(i), "resid", x_btd)
            outputs.append(x_btd)
            new_cache.append(layer_cache)
        return [x0_btd, *outputs], (None if cache is None else new_cache)

    def skip_in(self, x_btd, i: int, outputs: list) -> jax.Array:
        """U-net (model.unet_skips): block L-1-j starts from its input plus early block j's output times a
        learned gain, for j < L/2, so the late blocks see the early features without the middle's rewrites."""
        L = len(self.blocks)
        j = L - 1 - i
        if self.skip_gain_l is None or j >= L // 2:
            return x_btd
        return x_btd + self.skip_gain_l[...][L // 2 - 1 - j].astype(x_btd.dtype) * outputs[j]

    def value_rows(self, idx_bt) -> list[jax.Array | None]:
        """Per block, its value-embedding table's rows for the tokens (model.value_embeds), or None."""
        if self.w_value_evhk is None:
            return [None] * len(self.blocks)
        table_evhk = constrain(self.w_value_evhk[...], (None, "vocab", None, None))  # whole, as W_E
        tables = [self.cfg.value_table(i) for i in range(len(self.blocks))]
        return [None if e is None else table_evhk[e][idx_bt].astype(self.dtype) for e in tables]

    def after_next(self, x_btd: jax.Array) -> jax.Array:
        """Multi-token prediction (model.mtp_weight): logits for token t+2 from the final hidden state at t, mapped
        by W_MTP and unembedded by the shared head. Only training reads them (a loss on the side); the model's
        own logits stay next-token."""
        return self.unembed(dense(x_btd, self.w_mtp_dd, None, self.dtype))

    def unembed(self, x_btd: jax.Array) -> jax.Array:
        # Tied weights (GPT-2): W_U = W_Eᵀ. Logits come out float32 for a stable softmax.
        B, T, D = x_btd.shape
        w_vd = self.wte_vd if self.w_unembed_vd is None else self.w_unembed_vd
        logits_nv = jnp.einsum("nd,vd->nv", x_btd.reshape(B * T, D), w_vd[...].astype(self.dtype),
                               preferred_element_type=jnp.float32)
        if cap := self.cfg.logit_softcap:  # Gemma 2: smooth, so gradients never vanish at the cap
            logits_nv = cap * jnp.tanh(logits_nv / cap)
        return constrain(logits_nv.reshape(B, T, -1), ("batch", None, "act_vocab"))


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, dtype, layer: int = 0, *, rngs: nnx.Rngs):
        self.ln_1 = norm(cfg)
        self.attn = Attention(cfg, dtype, cfg.value_table(layer) is not None, rngs=rngs)
        self.ln_2 = norm(cfg)
        self.mlp = MLP(cfg, dtype, rngs=rngs)
        self.drop = nnx.Dropout(cfg.dropout)
        # model.embed_skips: the block starts from λ₀·x + λ₁·x₀, learned from (1, 0): the input as it was.
        self.x0_mix_2 = nnx.Param(jnp.array([1.0, 0.0]), axes=(None,)) if cfg.embed_skips else None

    def __call__(self, x_btd, *, rngs=None, cache=None, pos=0, ve_bthk=None, x0_btd=None, tap=None):
        if self.x0_mix_2 is not None:
            mix = self.x0_mix_2[...].astype(x_btd.dtype)
            x_btd = mix[0] * x_btd + mix[1] * x0_btd
        attn_btd, cache = self.attn(self.ln_1(x_btd), cache=cache, pos=pos, ve_bthk=ve_bthk, tap=tap)
        x_btd = x_btd + dropout(self.drop, attn_btd, rngs)
        x_btd = x_btd + dropout(self.drop, look(tap, "mlp_out", self.mlp(self.ln_2(x_btd))), rngs)
        return constrain(x_btd, BTD), cache


class Attention(nnx.Module):
    """Causal multi-head self-attention: softmax(QKᵀ/√K)V per head, heads projected by W_O.

    With G < H key/value heads each serves H/G query heads (grouped-query attention); the
    cache holds the G heads only.
    """

    def __init__(self, cfg: ModelConfig, dtype, value_embed: bool = False, *, rngs: nnx.Rngs):
        D, H, G, K = cfg.n_embd, cfg.n_head, cfg.kv_heads, cfg.head_dim
        residual_std = 0.02 / (2 * cfg.n_layer) ** 0.5  # GPT-2: keep the residual stream's variance flat in depth
        residual_std *= not cfg.zero_init_proj  # drawn all the same: the other weights keep their numbers
        self.dtype, self.rope = dtype, cfg.positions == "rope"
        self.wq_dhk = normal(rngs, (D, H, K), ("embed", "heads", "head_dim"), 0.02)
        self.wk_dhk = normal(rngs, (D, G, K), ("embed", "heads", "head_dim"), 0.02)
        self.wv_dhk = normal(rngs, (D, G, K), ("embed", "heads", "head_dim"), 0.02)
        self.wo_hkd = normal(rngs, (H, K, D), ("heads", "head_dim", "embed"), residual_std)
        self.bq_hk = constant((H, K), ("heads", "head_dim"), 0.0, cfg.bias)
        self.bk_hk = constant((G, K), ("heads", "head_dim"), 0.0, cfg.bias)
        self.bv_hk = constant((G, K), ("heads", "head_dim"), 0.0, cfg.bias)
        self.bo_d = constant((D,), ("embed",), 0.0, cfg.bias)
        # QK-norm (Dehghani et al. 2023): bounded logits whatever the weights grow to.
        self.q_norm = RMSNorm(K, "head_dim") if cfg.qk_norm else None
        self.k_norm = RMSNorm(K, "head_dim") if cfg.qk_norm else None
        # Value embeddings (model.value_embeds): v = λ₀·v + λ₁·(the token's table row), both λ learned from 1/2.
        self.ve_mix_2 = constant((2,), (None,), 0.5, value_embed)

    def __call__(self, x_btd, *, cache=None, pos=0, ve_bthk=None, tap=None):
        q_bthk, k_bshk, v_bshk = self.qkv(x_btd, pos, ve_bthk)
        if cache is not None:  # decoding: write this chunk's keys and values at pos, attend over all slots
            k_bshk, v_bshk = (jax.lax.dynamic_update_slice_in_dim(cache[name], new.astype(cache[name].dtype), pos, 1)
                              for name, new in (("k", k_bshk), ("v", v_bshk)))
            cache = {"k": k_bshk, "v": v_bshk}
        groups = q_bthk.shape[2] // k_bshk.shape[2]
        k_bshk, v_bshk = (jnp.repeat(a.astype(self.dtype), groups, axis=2) if groups > 1 else a.astype(self.dtype)
                          for a in (k_bshk, v_bshk))
        q_pos = None if cache is None else pos
        if tap is None:
            out_bthk = attention(q_bthk, k_bshk, v_bshk, q_pos)
        else:  # looked at (gptjax.look): the same softmax(QKᵀ/√K)V, with the weights the kernels never return
            probs_bhts = tap("probs", attention_weights(q_bthk, k_bshk, q_pos))
            out_bthk = tap("z", jnp.einsum("bhts,bshk->bthk", probs_bhts.astype(v_bshk.dtype), v_bshk))
        return look(tap, "attn_out", self.out(out_bthk)), cache

    def qkv(self, x_btd, pos=0, ve_bthk=None):
        """Queries, keys and values per head: q_bthk, k_bthk, v_bthk (normed, rotated, mixed if configured)."""
        q_bthk, k_bthk, v_bthk = (
            constrain(dense(x_btd, w, b, self.dtype), BTHK)
            for w, b in ((self.wq_dhk, self.bq_hk), (self.wk_dhk, self.bk_hk), (self.wv_dhk, self.bv_hk)))
        if self.q_norm is not None:
            q_bthk, k_bthk = self.q_norm(q_bthk), self.k_norm(k_bthk)
        if self.rope:
            q_bthk, k_bthk = rope.rotate(q_bthk, pos), rope.rotate(k_bthk, pos)
        if ve_bthk is not None:
            mix = self.ve_mix_2[...].astype(v_bthk.dtype)
            v_bthk = mix[0] * v_bthk + mix[1] * ve_bthk
        return q_bthk, k_bthk, v_bthk

    def out(self, o_bthk):
        """The heads' outputs, concatenated and projected back to the residual stream by W_O."""
        return dense(o_bthk, self.wo_hkd, self.bo_d, self.dtype, contract=2)


def look(tap, point: str, x: jax.Array) -> jax.Array:
    """x, or what a tap (bound to its layer) makes of it."""
    return x if tap is None else tap(point, x)


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
    shape = (batch, cfg.n_ctx, cfg.kv_heads, cfg.head_dim)
    return [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(cfg.n_layer)]


def count_params(model: nnx.Module) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
