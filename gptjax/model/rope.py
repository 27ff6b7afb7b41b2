"""Rotary positions (Su et al. 2021): a head's dimension pairs turned by angles proportional to position."""

from __future__ import annotations

import jax
import jax.numpy as jnp

BASE = 10_000.0  # RoFormer's and LLaMA's wavelength base


def rotate(x_bthk: jax.Array, pos: jax.Array | int) -> jax.Array:
    """Queries or keys of tokens at positions pos..pos+T-1, rotated (halves paired, as GPT-NeoX)."""
    T, K = x_bthk.shape[1], x_bthk.shape[-1]
    inv_freq_k = BASE ** (-jnp.arange(0, K, 2, dtype=jnp.float32) / K)
    angle_tk = (pos + jnp.arange(T, dtype=jnp.float32))[:, None] * inv_freq_k  # K/2 angles per position
    cos, sin = (f(angle_tk)[None, :, None, :] for f in (jnp.cos, jnp.sin))
    x1, x2 = jnp.split(x_bthk.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x_bthk.dtype)
