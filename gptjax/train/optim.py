"""The optimizer: global-norm clipping, then AdamW, Muon or Lion on a warmup + cosine (or trapezoidal) schedule."""

from __future__ import annotations

import jax
import optax
from optax.contrib import MuonDimensionNumbers, muon

from gptjax.config import TrainConfig

# Looked-up rows, not linear maps: Muon leaves them to AdamW.
TABLES = ("wte_vd", "wpe_td", "w_unembed_vd", "w_value_evhk")


def schedule(cfg: TrainConfig, peak: float | None = None) -> optax.Schedule:
    peak = cfg.lr if peak is None else peak
    if cfg.decay_steps <= cfg.warmup_steps:  # a run shorter than its warmup (a smoke test) never decays
        return optax.linear_schedule(0.0, peak, cfg.warmup_steps)
    end = cfg.min_lr * peak / cfg.lr if cfg.lr else 0.0
    if cfg.cooldown_frac:
        return trapezoid(cfg, peak, end)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=cfg.warmup_steps, decay_steps=cfg.decay_steps, end_value=end)


def trapezoid(cfg: TrainConfig, peak: float, end: float) -> optax.Schedule:
    """Warm-up to `peak`, hold it, then down in a straight line to `end` over the last cooldown_frac of the
    decay steps (modded-nanogpt's; warmup-stable-decay): the long stable part trains at full rate."""
    cooldown = max(1, round(cfg.cooldown_frac * cfg.decay_steps))
    stable = max(0, cfg.decay_steps - cfg.warmup_steps - cooldown)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, cfg.warmup_steps), optax.constant_schedule(peak),
         optax.linear_schedule(peak, end, cooldown)],
        boundaries=[cfg.warmup_steps, cfg.warmup_steps + stable])


def decay_mask(params):
    # As GPT-2 and nanoGPT: decay matrices and embeddings, never biases or LayerNorm gains.
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def muon_dims(params):
    """Each weight matrix as Muon's (input axes, output axes), read from its name's dimension suffix.

    w_dhk maps D to (H, K) and w_hkd maps (H, K) to D: both are orthogonalised as one 2-D
    matrix, as modded-nanogpt does with its fused projections. Tables and 1-D gains get None (AdamW).
    """
    def dims(path, p):
        name = next(str(k.key) for k in reversed(path) if hasattr(k, "key"))  # past nnx's `.value`
        if p.ndim < 2 or name in TABLES:
            return None
        if name.rsplit("_", 1)[-1].startswith("d"):
            return MuonDimensionNumbers(reduction_axis=0, output_axis=tuple(range(1, p.ndim)))
        return MuonDimensionNumbers(reduction_axis=tuple(range(p.ndim - 1)), output_axis=p.ndim - 1)
    return jax.tree_util.tree_map_with_path(dims, params)


def make(cfg: TrainConfig) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip) if cfg.grad_clip > 0 else optax.identity(),
        update_rule(cfg),
        # Only when set: one more link would change the optimizer state's tree, and old checkpoints with it.
        *([head_rate(cfg)] if cfg.head_lr else []),
    )


def head_rate(cfg: TrainConfig) -> optax.GradientTransformation:
    """train.head_lr: the untied W_U's AdamW step (decay included) rescaled from train.lr's to head_lr's."""
    def is_head(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, p: any(getattr(k, "key", None) == "w_unembed_vd" for k in path), params)
    return optax.masked(optax.scale(cfg.head_lr / cfg.lr), is_head)


def update_rule(cfg: TrainConfig) -> optax.GradientTransformation:
    if cfg.optimizer == "muon":
        return muon(schedule(cfg, cfg.muon_lr), beta=cfg.beta1 if cfg.beta1 else 0.95,
                    weight_decay=cfg.weight_decay, adam_learning_rate=schedule(cfg), adam_b1=cfg.beta1,
                    adam_b2=cfg.beta2, adam_weight_decay=cfg.weight_decay, muon_weight_dimension_numbers=muon_dims)
    if cfg.optimizer == "lion":
        return optax.lion(schedule(cfg), b1=cfg.beta1, b2=cfg.beta2, weight_decay=cfg.weight_decay, mask=decay_mask)
    return optax.adamw(schedule(cfg), b1=cfg.beta1, b2=cfg.beta2, eps=cfg.eps,
                       weight_decay=cfg.weight_decay, mask=decay_mask)
