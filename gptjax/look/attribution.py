"""Direct logit attribution: how much each embedding, head, attention bias and MLP adds to one logit.

The model's own pass builds the final residual stream from parts: the embeddings (token, and
position when learned), each head's output z_h·W_O,h, each layer's b_O and each MLP's output,
joined by sums and, with the speedrun's skips (model.unet_skips, model.embed_skips), by learned
scalar gains: linearly. The final norm is linear in the stream too once its statistic is frozen
at this position's value (σ for LayerNorm, the RMS for RMSNorm: the linearisation), and so is
the unembedding. So with every sublayer's output held at its value on this prompt the logit is
a linear function of the parts, and each part contributes its value times the logit's gradient
with respect to it (taken through the model's own pass, by its tap): the contributions sum to
the logit exactly (up to float rounding) whatever the architecture, plus the final norm's bias
β·W_U[v]. With model.logit_softcap they sum to the logit before the cap.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gptjax.look import hooks
from gptjax.model import GPT


@dataclasses.dataclass(frozen=True)
class Attribution:
    """Contributions to the logit of `target` at position `position`; `total()` equals `uncapped`."""

    target: int
    position: int
    logit: float          # the model's own logit
    uncapped: float       # the same before model.logit_softcap (equal to `logit` without a cap): what the parts sum to
    token: float          # W_E[token at position]
    position_embed: float  # W_P[position] (zero with rotary positions, which have no such part)
    heads_lh: np.ndarray  # z_h W_O,h of each layer's heads
    attn_bias_l: np.ndarray  # b_O of each layer (zero without biases)
    mlp_l: np.ndarray
    final_bias: float     # β · W_U[target] (zero without biases, and for RMSNorm)
    biases: bool          # whether the model has biases (rows() leaves the bias parts out if not)
    norm: str = "LayerNorm"  # the final norm's kind, as the rows and the note name it
    learned_positions: bool = True  # rows() shows W_P only where the model has it
    softcap: float = 0.0

    def total(self) -> float:
        return float(self.token + self.position_embed + self.heads_lh.sum() + self.attn_bias_l.sum()
                     + self.mlp_l.sum() + self.final_bias)

    def rows(self) -> list[tuple[str, float]]:
        """(part, contribution) in the order the forward pass adds them."""
        out = [("token embedding W_E", self.token)]
        out += [("position embedding W_P", self.position_embed)] if self.learned_positions else []
        for l in range(len(self.mlp_l)):
            out += [(f"layer {l} head {h}", v) for h, v in enumerate(self.heads_lh[l])]
            out += [(f"layer {l} attention bias b_O", self.attn_bias_l[l])] if self.biases else []
            out += [(f"layer {l} MLP", self.mlp_l[l])]
        final_bias = self.biases and self.norm == "LayerNorm"
        return [*out, (f"final {self.norm} bias β", self.final_bias)] if final_bias else out

    def note(self) -> str:
        """How the parts relate to the logit, in words."""
        stat = "σ" if self.norm == "LayerNorm" else "RMS"
        cap = f"; they sum to the logit before its soft cap at ±{self.softcap:g}" if self.softcap else ""
        return f"final {self.norm} linearised: its {stat} frozen at this position's value{cap}"


def attribute(model: GPT, ids: list[int], target: int, position: int = -1) -> Attribution:
    """The direct contribution of every part of the model to the logit of `target` after `ids[: position + 1]`."""
    idx_bt = jnp.asarray([ids], jnp.int32)
    logits_btv, cache = hooks.run_with_cache(model, idx_bt)
    t = range(len(ids))[position]
    g = _gradients(model, idx_bt, cache, jnp.int32(t), jnp.int32(target))
    embed = lambda part: 0.0 if part is None else float((g["embed"] * part.astype(jnp.float32)).sum())
    heads_lh = np.asarray((g["z"] * cache.z_lbthk).sum((1, 2, 4)), np.float64)
    biases = [b.attn.bo_d for b in model.blocks]
    attn_bias_l = np.array([0.0 if b is None else float((g_l * b[...]).sum()) for g_l, b in zip(g["attn_out"], biases)])
    mlp_l = np.asarray((g["mlp_out"] * cache.mlp_out_lbtd).sum((1, 2, 3)), np.float64)
    w_d = unembedding_row(model, target)
    bias_d = getattr(model.ln_f, "bias_d", None)  # RMSNorm has none
    final_bias = 0.0 if bias_d is None else float(bias_d[...] @ w_d)
    cfg = model.cfg
    uncapped = float(model.ln_f(cache.resid_lbtd[-1, 0, t]).astype(jnp.float32) @ w_d)  # unembed's, before the cap
    norm = "LayerNorm" if cfg.norm == "layernorm" else "RMSNorm"
    return Attribution(target, t, float(logits_btv[0, t, target]), uncapped, embed(cache.tok_btd),
                       embed(cache.pos_td), heads_lh, attn_bias_l, mlp_l, final_bias, cfg.bias, norm,
                       cfg.positions == "learned", cfg.logit_softcap)


def unembedding_row(model: GPT, v) -> jax.Array:
    """W_U[v]: the row of the unembedding (tied: W_E's) that reads the logit of token v."""
    w_vd = model.wte_vd if model.w_unembed_vd is None else model.w_unembed_vd
    return w_vd[...][v]


@nnx.jit
def _gradients(model: GPT, idx_bt, cache: hooks.Cache, t, target) -> dict:
    """The linearised logit's gradient with respect to each part, through the model's own pass.

    Every head's output z and every MLP's output are held at their cached values, so nothing the
    sublayers compute from the stream flows on: the stream, and the logit read through the frozen
    final norm and W_U[target], are linear in what the tap adds at each point. The embeddings and
    attention outputs (z·W_O + b_O) are left to the pass, so b_O's gradient is the attention output's.
    """
    held = {"z": cache.z_lbthk, "mlp_out": cache.mlp_out_lbtd}
    frozen = model.ln_f.frozen(cache.resid_lbtd[-1, 0, t])
    w_d = unembedding_row(model, target)

    def logit(probes):
        def tap(layer, point, x):
            x = held[point][layer] if point in held else x
            if point not in probes:
                return x
            return x + (probes[point] if layer is None else probes[point][layer]).astype(x.dtype)

        xs, _ = model.stream(idx_bt, tap=tap)
        return frozen(xs[-1][0, t].astype(jnp.float32)) @ w_d

    probes = {"embed": jnp.zeros(cache.resid_lbtd.shape[1:]), "z": jnp.zeros(cache.z_lbthk.shape),
              "attn_out": jnp.zeros(cache.attn_out_lbtd.shape), "mlp_out": jnp.zeros(cache.mlp_out_lbtd.shape)}
    return jax.grad(logit)(probes)
