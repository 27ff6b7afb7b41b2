"""The optimizer: global-norm clipping, then AdamW on a warmup + cosine schedule."""

from __future__ import annotations

import jax
import optax

from gptjax.config import TrainConfig


def schedule(cfg: TrainConfig) -> optax.Schedule:
    if cfg.decay_steps <= cfg.warmup_steps:  # a run shorter than its warmup (a smoke test) never decays
        return optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.lr, warmup_steps=cfg.warmup_steps,
        decay_steps=cfg.decay_steps, end_value=cfg.min_lr)


def decay_mask(params):
    # As GPT-2 and nanoGPT: decay matrices and embeddings, never biases or LayerNorm gains.
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make(cfg: TrainConfig) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip) if cfg.grad_clip > 0 else optax.identity(),
        optax.adamw(schedule(cfg), b1=cfg.beta1, b2=cfg.beta2, eps=cfg.eps,
                    weight_decay=cfg.weight_decay, mask=decay_mask),
    )
