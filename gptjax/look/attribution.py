"""Direct logit attribution: how much each embedding, head, attention bias and MLP adds to one logit.

The final residual stream is a sum of parts: x = W_E[token] + W_P[pos] + Σ_layers (Σ_heads
z_h W_O,h + b_O) + Σ_layers MLP. The logit of token v is ln_f(x) · W_E[v] (tied unembedding),
and ln_f(x) = (x - mean(x)) · σ⁻¹ · γ + β is linear in x except through σ, x's standard
deviation. With σ frozen at its value on this prompt (the linearisation), each part c
contributes (c - mean(c)) · σ⁻¹ · γ · W_E[v], β · W_E[v] is a part of its own, and the
contributions sum to the logit exactly (up to float rounding).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from gptjax.look import hooks
from gptjax.model import GPT

LN_EPS = 1e-5  # model.LayerNorm's epsilon: σ = sqrt(var + eps)


@dataclasses.dataclass(frozen=True)
class Attribution:
    """Contributions to the logit of `target` at position `position`; `total()` equals `logit`."""

    target: int
    position: int
    logit: float          # the model's own logit
    token: float          # W_E[token at position]
    position_embed: float  # W_P[position]
    heads_lh: np.ndarray  # z_h W_O,h of each layer's heads
    attn_bias_l: np.ndarray  # b_O of each layer (zero without biases)
    mlp_l: np.ndarray
    final_bias: float     # β · W_E[target] (zero without biases)
    biases: bool          # whether the model has biases (rows() leaves the bias parts out if not)

    def total(self) -> float:
        return float(self.token + self.position_embed + self.heads_lh.sum() + self.attn_bias_l.sum()
                     + self.mlp_l.sum() + self.final_bias)

    def rows(self) -> list[tuple[str, float]]:
        """(part, contribution) in the order the forward pass adds them."""
        out = [("token embedding W_E", self.token), ("position embedding W_P", self.position_embed)]
        for l in range(len(self.mlp_l)):
            out += [(f"layer {l} head {h}", v) for h, v in enumerate(self.heads_lh[l])]
            out += [(f"layer {l} attention bias b_O", self.attn_bias_l[l])] if self.biases else []
            out += [(f"layer {l} MLP", self.mlp_l[l])]
        return [*out, ("final LayerNorm bias β", self.final_bias)] if self.biases else out


def attribute(model: GPT, ids: list[int], target: int, position: int = -1) -> Attribution:
    """The direct contribution of every part of the model to the logit of `target` after `ids[: position + 1]`."""
    logits_btv, cache = hooks.run_with_cache(model, ids)
    t = range(len(ids))[position]
    x_d = cache.resid_lbtd[-1, 0, t].astype(jnp.float32)
    ln = model.ln_f
    sigma = jnp.sqrt(jnp.square(x_d - x_d.mean()).mean() + LN_EPS)
    w_d = model.wte_vd[...][target] * ln.scale_d[...] / sigma
    # Each part's contribution: its centred value through the frozen norm, against W_E[target].
    read = lambda c_nd: np.asarray((c_nd - c_nd.mean(-1, keepdims=True)) @ w_d, np.float64)
    wo_lhkd = jnp.stack([b.attn.wo_hkd[...] for b in model.blocks])
    heads_lhd = jnp.einsum("lhk,lhkd->lhd", cache.z_lbthk[:, 0, t].astype(jnp.float32), wo_lhkd)
    attn_bias_ld = jnp.stack([b.attn.bo_d[...] if b.attn.bo_d is not None else jnp.zeros_like(x_d)
                              for b in model.blocks])
    final_bias = 0.0 if ln.bias_d is None else float(ln.bias_d[...] @ model.wte_vd[...][target])
    return Attribution(target, t, float(logits_btv[0, t, target]), float(read(cache.tok_btd[0, t])),
                       float(read(cache.pos_td[t])), read(heads_lhd), read(attn_bias_ld),
                       read(cache.mlp_out_lbtd[:, 0, t]), final_bias, model.cfg.bias)
