"""A forward pass with every activation cached, and heads or sublayers patched: the API under `inspect heads`.

The pass is the model's own, one block at a time: `block.ln_1`, the layer's attention
weights (`analysis.attention_probs`, from its own W_Q and W_K), its W_V and W_O, `block.ln_2`,
`block.mlp`, `model.ln_f` and `model.unembed`. It stops at the one place where the model
sums over heads (W_O), so each head's output z_bthk = Σ_s p_hts v_bshk can be read or
replaced there. Tests check that with no patch it reproduces the model's logits.

For notebooks:

    from gptjax.look import hooks
    run, model = hooks.load("runs/shakespeare_char_cpu")
    idx_bt = hooks.encode(run, "To be, or not to be")
    logits_btv, cache = hooks.run_with_cache(model, idx_bt)      # cache.probs_lbhts, cache.z_lbthk, ...
    patch = hooks.Patch.identity(model.cfg).ablate_head(1, 3)    # zero layer 1's head 3
    patched_btv, _ = hooks.run_with_cache(model, idx_bt, patch)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from gptjax.look import analysis
from gptjax.model import GPT, add_bias


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Patch:
    """What to overwrite in a forward pass: where a `keep` entry is False, that activation is
    replaced by its `fill` (broadcast against it: one vector for every position, or a whole
    activation from another run). Heads are patched at their output z (before W_O, so the
    layer's bias b_O stays); sublayers at their whole output, biases included."""

    head_keep_lh: jax.Array    # bool[L, H]
    head_fill_lbthk: jax.Array  # [L, 1 or B, 1 or T, H, K]
    attn_keep_l: jax.Array     # bool[L]
    attn_fill_lbtd: jax.Array  # [L, 1 or B, 1 or T, D]
    mlp_keep_l: jax.Array
    mlp_fill_lbtd: jax.Array

    @classmethod
    def identity(cls, cfg) -> Patch:
        """Nothing replaced: run_with_cache(model, idx, Patch.identity(cfg)) is the plain forward pass."""
        L, H, K, D = cfg.n_layer, cfg.n_head, cfg.head_dim, cfg.n_embd
        keep = lambda *shape: jnp.ones(shape, bool)
        return cls(keep(L, H), jnp.zeros((L, 1, 1, H, K)), keep(L), jnp.zeros((L, 1, 1, D)),
                   keep(L), jnp.zeros((L, 1, 1, D)))

    def ablate_head(self, layer: int, head: int, fill_k: jax.Array | None = None) -> Patch:
        """Knock out one head: its output z becomes `fill_k` (its mean, say) at every position, or zero."""
        fill = self.head_fill_lbthk.at[layer, :, :, head].set(0.0 if fill_k is None else fill_k)
        return dataclasses.replace(self, head_keep_lh=self.head_keep_lh.at[layer, head].set(False),
                                   head_fill_lbthk=fill)

    def patch_head(self, layer: int, head: int, source: Cache) -> Patch:
        """Activation patching: the head's output z taken from another run's cache (same shape of input)."""
        z_lbthk = source.z_lbthk
        fill = jnp.broadcast_to(self.head_fill_lbthk, z_lbthk.shape)
        fill = fill.at[layer, :, :, head].set(z_lbthk[layer, :, :, head])
        return dataclasses.replace(self, head_keep_lh=self.head_keep_lh.at[layer, head].set(False),
                                   head_fill_lbthk=fill)

    def ablate_attn(self, layer: int, fill_d: jax.Array | None = None) -> Patch:
        """Knock out a layer's whole attention sublayer (every head and b_O): its output becomes `fill_d` or zero."""
        return dataclasses.replace(self, attn_keep_l=self.attn_keep_l.at[layer].set(False),
                                   attn_fill_lbtd=self.attn_fill_lbtd.at[layer].set(0.0 if fill_d is None else fill_d))

    def ablate_mlp(self, layer: int, fill_d: jax.Array | None = None) -> Patch:
        """Knock out a layer's MLP sublayer: its output becomes `fill_d` or zero."""
        return dataclasses.replace(self, mlp_keep_l=self.mlp_keep_l.at[layer].set(False),
                                   mlp_fill_lbtd=self.mlp_fill_lbtd.at[layer].set(0.0 if fill_d is None else fill_d))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Cache:
    """Every activation of one forward pass, stacked over layers (l), batch kept (b)."""

    tok_btd: jax.Array         # token embeddings W_E[idx]
    pos_td: jax.Array          # position embeddings W_P[:T]
    resid_lbtd: jax.Array      # residual stream after the embeddings and after each block: L + 1 entries
    probs_lbhts: jax.Array     # attention weights (rows: queries t, columns: keys s)
    z_lbthk: jax.Array         # each head's output before W_O, after any patch
    attn_out_lbtd: jax.Array   # each attention sublayer's output, b_O included, after any patch
    mlp_out_lbtd: jax.Array    # each MLP sublayer's output, after any patch


def _attention(attn, h_btd: jax.Array, layer: int, patch: Patch):
    """One attention sublayer, split at W_O so each head's output can be patched."""
    probs_bhts = analysis.attention_probs(attn, h_btd)
    v_bshk = add_bias(jnp.einsum("btd,dhk->bthk", h_btd, attn.wv_dhk[...].astype(attn.dtype)), attn.bv_hk)
    z_bthk = jnp.einsum("bhts,bshk->bthk", probs_bhts.astype(v_bshk.dtype), v_bshk)
    z_bthk = jnp.where(patch.head_keep_lh[layer][:, None], z_bthk, patch.head_fill_lbthk[layer].astype(z_bthk.dtype))
    out_btd = add_bias(jnp.einsum("bthk,hkd->btd", z_bthk, attn.wo_hkd[...].astype(attn.dtype)), attn.bo_d)
    out_btd = jnp.where(patch.attn_keep_l[layer], out_btd, patch.attn_fill_lbtd[layer].astype(out_btd.dtype))
    return probs_bhts, z_bthk, out_btd


def forward(model: GPT, idx_bt: jax.Array, patch: Patch) -> tuple[jax.Array, Cache]:
    """Logits and the cache of a forward pass with `patch` applied (dropout off)."""
    B, T = idx_bt.shape
    x_btd = analysis.embed(model, idx_bt)
    resid, probs, zs, attn_outs, mlp_outs = [x_btd], [], [], [], []
    for layer, block in enumerate(model.blocks):
        probs_bhts, z_bthk, attn_btd = _attention(block.attn, block.ln_1(x_btd), layer, patch)
        x_btd = x_btd + attn_btd
        mlp_btd = block.mlp(block.ln_2(x_btd).reshape(B * T, -1)).reshape(x_btd.shape)
        mlp_btd = jnp.where(patch.mlp_keep_l[layer], mlp_btd, patch.mlp_fill_lbtd[layer].astype(mlp_btd.dtype))
        x_btd = x_btd + mlp_btd
        for store, value in ((resid, x_btd), (probs, probs_bhts), (zs, z_bthk), (attn_outs, attn_btd),
                             (mlp_outs, mlp_btd)):
            store.append(value)
    logits_btv = model.unembed(model.ln_f(x_btd))
    cache = Cache(model.wte_vd[...][idx_bt], model.wpe_td[...][:T], *map(jnp.stack, (resid, probs, zs, attn_outs,
                                                                                        mlp_outs)))
    return logits_btv, cache


@nnx.jit
def _run_with_cache(model: GPT, idx_bt: jax.Array, patch: Patch):
    return forward(model, idx_bt, patch)


@nnx.jit
def _loss(model: GPT, x_bt: jax.Array, y_bt: jax.Array, patch: Patch) -> jax.Array:
    # Only the logits are returned, so XLA drops the cache: no cost for what is not read.
    logits_btv = forward(model, x_bt, patch)[0]
    return optax.softmax_cross_entropy_with_integer_labels(logits_btv, y_bt).mean()


def run_with_cache(model: GPT, idx_bt, patch: Patch | None = None) -> tuple[jax.Array, Cache]:
    """Logits [B, T, V] and every activation, for token ids [B, T] (or one prompt's [T]); compiled once per shape."""
    idx_bt = jnp.asarray(idx_bt, jnp.int32)
    idx_bt = idx_bt[None] if idx_bt.ndim == 1 else idx_bt
    return _run_with_cache(model, idx_bt, patch if patch is not None else Patch.identity(model.cfg))


def loss(model: GPT, x_bt, y_bt, patch: Patch | None = None) -> float:
    """Mean next-token cross-entropy of the patched model on one batch."""
    return float(_loss(model, jnp.asarray(x_bt, jnp.int32), jnp.asarray(y_bt, jnp.int32),
                       patch if patch is not None else Patch.identity(model.cfg)))


def load(run_dir, step="latest"):
    """A trained run and its model: (run, model), as `gptjax inspect` loads them."""
    from gptjax.train import runs

    run = runs.load(run_dir, step)
    return run, run.model()


def encode(run, text: str) -> jax.Array:
    """A prompt as the model sees it: int32[1, T], its last n_ctx tokens."""
    return jnp.asarray([analysis.prompt_ids(run.tokenizer, text, run.cfg.model.n_ctx)], jnp.int32)
