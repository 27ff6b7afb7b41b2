"""A forward pass with every activation cached, and heads or sublayers patched: the API under `inspect heads`.

The pass is the model's own `GPT.__call__`, every architecture knob included (rotary positions,
RMSNorm, grouped K/V heads, the speedrun's skips and value embeddings, a soft cap); its tap
(`gptjax.model.Tap`) hands each activation here on its way: the attention weights, each head's
output z_bthk = Σ_s p_hts v_bshk before W_O sums over heads, each attention and MLP sublayer's
output and each block's output, so they can be read or replaced there. Tests check that with no
patch it reproduces the model's logits.

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

from gptjax.model import GPT


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
    pos_td: jax.Array | None   # position embeddings W_P[:T]; None with rotary positions (model.positions=rope)
    resid_lbtd: jax.Array      # residual stream after the embeddings and after each block: L + 1 entries
    probs_lbhts: jax.Array     # attention weights (rows: queries t, columns: keys s)
    z_lbthk: jax.Array         # each head's output before W_O, after any patch
    attn_out_lbtd: jax.Array   # each attention sublayer's output, b_O included, after any patch
    mlp_out_lbtd: jax.Array    # each MLP sublayer's output, after any patch


# Where a patch acts: the tap's point -> (keep, fill) of a layer.
PATCHED = {
    "z": lambda p, layer: (p.head_keep_lh[layer][:, None], p.head_fill_lbthk[layer]),
    "attn_out": lambda p, layer: (p.attn_keep_l[layer], p.attn_fill_lbtd[layer]),
    "mlp_out": lambda p, layer: (p.mlp_keep_l[layer], p.mlp_fill_lbtd[layer]),
}


def forward(model: GPT, idx_bt: jax.Array, patch: Patch) -> tuple[jax.Array, Cache]:
    """Logits and the cache of the model's own forward pass with `patch` applied (dropout off)."""
    seen: dict[str, list[jax.Array]] = {}

    def tap(layer, point, x):
        if point in PATCHED:
            keep, fill = PATCHED[point](patch, layer)
            x = jnp.where(keep, x, fill.astype(x.dtype))
        seen.setdefault(point, []).append(x)
        return x

    logits_btv = model(idx_bt, tap=tap)
    pos_td = None if model.wpe_td is None else model.wpe_td[...][:idx_bt.shape[1]]
    stacked = [jnp.stack(seen[point]) for point in ("probs", "z", "attn_out", "mlp_out")]
    cache = Cache(model.wte_vd[...][idx_bt], pos_td, jnp.stack(seen["embed"] + seen["resid"]), *stacked)
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
    from gptjax.look import analysis

    return jnp.asarray([analysis.prompt_ids(run.tokenizer, text, run.cfg.model.n_ctx)], jnp.int32)
