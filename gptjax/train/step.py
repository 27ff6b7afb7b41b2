"""Loss, train step and eval step: pure functions of their inputs, jitted once.

Following the NNX performance guide, the model is split once into a static graphdef and
a params State; each step merges them inside the trace, so jit sees plain pytrees.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from gptjax import sharding


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    step: jax.Array        # int32 scalar: optimizer updates taken so far
    params: nnx.State
    opt_state: optax.OptState
    rng: jax.Array         # uint32[2] key data; step k's dropout key is fold_in(rng, k)


def initial_rng(seed) -> jax.Array:
    """A run's dropout key data, from its seed (the init key is the seed's own)."""
    return jax.random.key_data(jax.random.fold_in(jax.random.PRNGKey(seed), 1))


def loss_fn(params: nnx.State, graphdef: nnx.GraphDef, x_bt, y_bt, dropout_key=None) -> jax.Array:
    """Mean next-token cross-entropy; dropout is on when a key is given. Evaluation's loss, whatever training
    adds (objective)."""
    model = nnx.merge(graphdef, params)
    rngs = nnx.Rngs(dropout=dropout_key) if dropout_key is not None and model.cfg.dropout > 0 else None
    logits_btv = model(x_bt, rngs=rngs)
    return optax.softmax_cross_entropy_with_integer_labels(logits_btv, y_bt).mean()


def objective(params: nnx.State, graphdef: nnx.GraphDef, x_bt, y_bt, dropout_key=None) -> tuple[jax.Array, dict]:
    """What training minimises and its parts: the next-token loss (train_loss), plus model.mtp_weight times the
    loss of predicting token t+2 (mtp_loss; the last position has no such target) when that is on."""
    model = nnx.merge(graphdef, params)
    rngs = nnx.Rngs(dropout=dropout_key) if dropout_key is not None and model.cfg.dropout > 0 else None
    x_btd, _ = model.hidden(x_bt, rngs=rngs)
    loss = optax.softmax_cross_entropy_with_integer_labels(model.unembed(x_btd), y_bt).mean()
    if not model.cfg.mtp_weight:
        return loss, {"train_loss": loss}
    mtp = (optax.softmax_cross_entropy_with_integer_labels(model.after_next(x_btd[:, :-1]), y_bt[:, 1:]).mean()
           if x_bt.shape[1] > 1 else jnp.zeros((), jnp.float32))  # a one-token window has no token t+2
    return loss + model.cfg.mtp_weight * mtp, {"train_loss": loss, "mtp_loss": mtp}


def all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(tree)]))


def train_step(graphdef, tx: optax.GradientTransformation, schedule: optax.Schedule,
               state: TrainState, x_abt: jax.Array, y_abt: jax.Array, skip_nonfinite: bool = False
               ) -> tuple[TrainState, dict]:
    """One optimizer update from A micro-batches (x_abt: [A, B/A, T]); grads are averaged.

    metrics["finite"] says whether the loss, the gradients and the new parameters are all
    finite. It stays on the device so the loop can read a batch of them when it logs,
    instead of syncing every step; with skip_nonfinite a bad step keeps the old state here.
    """
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

    def micro(grad_sum, xs):
        x_bt, y_bt, i = xs
        (_, parts), grads = jax.value_and_grad(objective, has_aux=True)(state.params, graphdef, x_bt, y_bt,
                                                                        jax.random.fold_in(key, i))
        return jax.tree.map(jnp.add, grad_sum, grads), parts

    n_micro = x_abt.shape[0]
    zeros = jax.tree.map(jnp.zeros_like, state.params)
    grad_sum, parts = jax.lax.scan(micro, zeros, (x_abt, y_abt, jnp.arange(n_micro)))
    grads = jax.tree.map(lambda g: g / n_micro, grad_sum)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    loss, grad_norm = parts.pop("train_loss").mean(), optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & all_finite(params)
    if skip_nonfinite:
        params, opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                                         (params, opt_state), (state.params, state.opt_state))
    metrics = {
        "train_loss": loss,
        "grad_norm": grad_norm,
        "update_ratio": optax.global_norm(updates) / optax.global_norm(state.params),
        "lr": schedule(state.step),
        "finite": finite,
        **{name: part.mean() for name, part in parts.items()},  # mtp_loss, when on
    }
    return TrainState(state.step + 1, params, opt_state, state.rng), metrics


def eval_step(graphdef, params: nnx.State, x_bt: jax.Array, y_bt: jax.Array) -> jax.Array:
    return loss_fn(params, graphdef, x_bt, y_bt)


def jit_train_step(graphdef, tx, schedule, state_shardings=None, mesh=None, skip_nonfinite: bool = False,
                   stacked: bool = False):
    """The jitted step; the incoming state is donated so XLA updates it in place.

    With a mesh, the step is traced under it so the model's activation constraints apply.
    `stacked`: states and batches carry a leading axis of runs (gptjax.train.seeds), laid along the
    mesh's `runs` axis, each updated as it would be alone.
    """
    step = partial(train_step, graphdef, tx, schedule, skip_nonfinite=skip_nonfinite)
    step = _over_runs(step) if stacked else step
    return jax.jit(step if mesh is None else sharding.traced_under(mesh, step), donate_argnums=0,
                   out_shardings=(state_shardings, None) if state_shardings is not None else None)


def jit_eval_step(graphdef, mesh=None, stacked: bool = False):
    step = _over_runs(partial(eval_step, graphdef)) if stacked else partial(eval_step, graphdef)
    return jax.jit(step if mesh is None else sharding.traced_under(mesh, step))


def _over_runs(step):
    # The runs axis joins every activation constraint inside, so no run's activations leave its device.
    return jax.vmap(step, spmd_axis_name=sharding.RUNS)
