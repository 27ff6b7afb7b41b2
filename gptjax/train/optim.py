"""The optimizer: global-norm clipping, then AdamW, Muon or Lion on a warmup + cosine (or trapezoidal) schedule;
the levers of gptjax/train/optim_levers.py (Polar Express, NorMuon, cautious weight decay) when set."""

from __future__ import annotations

import jax
import optax
from optax.contrib import MuonDimensionNumbers, scale_by_muon
from optax.contrib._muon import scale_by_shape  # not exported; pinned by tests/test_recipe.py

from gptjax.config import ModelConfig, TrainConfig
from gptjax.train.optim_levers import add_decayed_weights, decay, muon_coeffs, scale_by_neuron_rms

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


def leaf_name(path) -> str:
    """A parameter's own name (`wq_dhk`, `bq_hk`, `scale_d`), past nnx's `.value`."""
    return next(str(k.key) for k in reversed(path) if hasattr(k, "key"))


def is_weight(path) -> bool:
    # The model names matrices and tables w*, biases b* and norm gains scale_*. By name, not by rank:
    # the attention biases are (H, K) arrays, as 2-D as a matrix.
    return leaf_name(path).startswith("w")


def decay_mask(params):
    # As GPT-2 and nanoGPT: decay matrices and embeddings, never biases or norm gains.
    return jax.tree_util.tree_map_with_path(lambda path, p: is_weight(path), params)


def muon_dims(params):
    """Each weight matrix as Muon's (input axes, output axes), read from its name's dimension suffix.

    w_dhk maps D to (H, K) and w_hkd maps (H, K) to D: both are orthogonalised as one 2-D
    matrix, as modded-nanogpt does with its fused projections. Tables, biases and gains get None (AdamW).
    """
    def dims(path, p):
        name = leaf_name(path)
        if not is_weight(path) or name in TABLES:
            return None
        if name.rsplit("_", 1)[-1].startswith("d"):
            return MuonDimensionNumbers(reduction_axis=0, output_axis=tuple(range(1, p.ndim)))
        return MuonDimensionNumbers(reduction_axis=tuple(range(p.ndim - 1)), output_axis=p.ndim - 1)
    return jax.tree_util.tree_map_with_path(dims, params)


def replicated_flops(model: ModelConfig, train: TrainConfig) -> int:
    """FLOPs per step of the update that every data-parallel device repeats whole: Muon's orthogonalisation,
    5 iterations of X <- aX + (bA + cA²)X with A = XXᵀ on every matrix taken as m x n (m <= n), 4m²n + 2m³
    each; 0 for AdamW and Lion (elementwise). Splitting a batch over devices divides the rest of the step,
    not this (sharding.mesh_devices)."""
    if train.optimizer != "muon":
        return 0
    D, F, KV = model.n_embd, model.mlp_dim, model.kv_heads * model.head_dim
    matrices = [(D, D), (D, KV), (D, KV), (D, D)] + [(D, F)] * (3 if model.mlp == "swiglu" else 2)
    return 5 * model.n_layer * sum(4 * min(m, n) ** 2 * max(m, n) + 2 * min(m, n) ** 3 for m, n in matrices)


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
    # optax.adamw and optax.lion, link for link (the same state tree), with the decay link ours.
    if cfg.optimizer == "muon":
        return muon(cfg)
    if cfg.optimizer == "lion":
        direction = optax.scale_by_lion(b1=cfg.beta1, b2=cfg.beta2)
    else:
        direction = optax.scale_by_adam(b1=cfg.beta1, b2=cfg.beta2, eps=cfg.eps)
    return optax.chain(direction, add_decayed_weights(cfg.weight_decay, decay_mask, cfg.cautious_wd),
                       optax.scale_by_learning_rate(schedule(cfg)))


def muon(cfg: TrainConfig) -> optax.GradientTransformation:
    """optax.contrib.muon's parts, assembled here so that its AdamW part decays weights only: contrib.muon
    decays every parameter it leaves to AdamW, biases and norm gains included. The parts and the state
    tree are contrib.muon's, so Muon checkpoints saved before still restore. train.normuon adds a link
    (its statistics in the state), train.muon_iteration=polar_express a (5, 3) ns_coeffs in it."""
    matrices = optax.chain(
        scale_by_muon(ns_coeffs=muon_coeffs(cfg.muon_iteration), beta=cfg.beta1 if cfg.beta1 else 0.95,
                      weight_dimension_numbers=muon_dims),
        *([scale_by_neuron_rms(muon_dims)] if cfg.normuon else []),
        scale_by_shape(weight_dimension_numbers=muon_dims),
        add_decayed_weights(cfg.weight_decay, cautious=cfg.cautious_wd),
        optax.scale_by_learning_rate(schedule(cfg, cfg.muon_lr)))
    others = optax.chain(  # optax.adamw as contrib.muon builds it (Nesterov), its decay on weights only
        optax.scale_by_adam(b1=cfg.beta1, b2=cfg.beta2, eps=cfg.eps, nesterov=True),
        decay_on_weights(cfg.weight_decay, cfg.cautious_wd),
        optax.scale_by_learning_rate(schedule(cfg)))
    return optax.partition({"muon": matrices, "adam": others}, muon_labels)


def muon_labels(params):
    return jax.tree.map(lambda dims: "adam" if dims is None else "muon", muon_dims(params),
                        is_leaf=lambda x: x is None or isinstance(x, MuonDimensionNumbers))


def decay_on_weights(weight_decay: float, cautious: bool = False) -> optax.GradientTransformation:
    """Decay on the weights only (decay_mask), with optax.add_decayed_weights's empty state: the masked
    form's state is another tree, which Muon checkpoints saved before would not restore into."""
    def update(updates, state, params):
        step = decay(weight_decay, cautious)
        decayed = jax.tree.map(lambda u, p, w: step(u, p) if w else u, updates, params, decay_mask(params))
        return decayed, state
    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)
