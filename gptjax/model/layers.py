"""The position-wise layers the config chooses between: norms (LayerNorm, RMSNorm) and MLPs (GELU, ReLU², SwiGLU)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from gptjax.config import ModelConfig
from gptjax.model.init import constant, normal
from gptjax.sharding import constrain

ACTIVATIONS = {
    "gelu": lambda h: jax.nn.gelu(h, approximate=True),  # GPT-2's tanh GELU
    "relu2": lambda h: jnp.square(jax.nn.relu(h)),       # Primer (So et al. 2021), modded-nanogpt
    "swiglu": jax.nn.silu,                                # gated by a second projection (Shazeer 2020)
}


class MLP(nnx.Module):
    """act(x·W_up) · W_down; SwiGLU multiplies the activation by a gate x·W_gate first."""

    def __init__(self, cfg: ModelConfig, dtype, *, rngs: nnx.Rngs):
        D, F = cfg.n_embd, cfg.mlp_dim
        self.dtype, self.act = dtype, ACTIVATIONS[cfg.mlp]
        self.w_up_df = normal(rngs, (D, F), ("embed", "mlp"), 0.02)
        down_std = 0.02 / (2 * cfg.n_layer) ** 0.5 * (not cfg.zero_init_proj)  # drawn all the same, as W_O
        self.w_down_fd = normal(rngs, (F, D), ("mlp", "embed"), down_std)
        self.b_up_f = constant((F,), ("mlp",), 0.0, cfg.bias)
        self.b_down_d = constant((D,), ("embed",), 0.0, cfg.bias)
        gated = cfg.mlp == "swiglu"
        self.w_gate_df = normal(rngs, (D, F), ("embed", "mlp"), 0.02) if gated else None
        self.b_gate_f = constant((F,), ("mlp",), 0.0, cfg.bias and gated)

    def __call__(self, x_btd):
        h_btf = self.act(dense(x_btd, self.w_up_df, self.b_up_f, self.dtype))
        if self.w_gate_df is not None:
            h_btf = h_btf * dense(x_btd, self.w_gate_df, self.b_gate_f, self.dtype)
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

    def frozen(self, x_d):
        """This norm at x with x's σ frozen, bias left out: the linear map c -> (c - mean(c))·γ/σ, so that
        norm(x) = frozen(x)(x) + β. Direct logit attribution reads each part of the stream through it."""
        x = x_d.astype(jnp.float32)
        scale = jax.lax.rsqrt(jnp.square(x - x.mean(-1, keepdims=True)).mean(-1, keepdims=True) + 1e-5)
        return lambda c: (c - c.mean(-1, keepdims=True)) * scale * self.scale_d[...]


class RMSNorm(nnx.Module):
    """x / rms(x) · g over the last axis (of size `size`: D, or K for queries and keys)."""

    def __init__(self, size: int, axis_name: str | None = "embed"):
        self.scale_d = constant((size,), (axis_name,), 1.0)

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + 1e-5) * self.scale_d[...]
        return y.astype(x.dtype)

    def frozen(self, x):
        """This norm at x with x's RMS frozen: the linear map c -> c·g/rms(x) (norm(x) = frozen(x)(x))."""
        x32 = x.astype(jnp.float32)
        scale = jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + 1e-5)
        return lambda c: c * scale * self.scale_d[...]


def norm(cfg: ModelConfig) -> LayerNorm | RMSNorm:
    return LayerNorm(cfg) if cfg.norm == "layernorm" else RMSNorm(cfg.n_embd)


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
