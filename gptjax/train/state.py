"""Training state: the pieces built once per run (shardings, jitted steps), and a state made, restored, saved."""

from __future__ import annotations

import dataclasses
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gptjax import sharding
from gptjax.config import Config
from gptjax.model import GPT, abstract_model
from gptjax.train import optim
from gptjax.train.checkpoint import CheckpointError, Checkpoints
from gptjax.train.step import TrainState, initial_rng, jit_eval_step, jit_train_step


@dataclasses.dataclass
class Pieces:
    """Everything built once per run: static structure, placements and the compiled steps."""
    graphdef: nnx.GraphDef
    state_shardings: TrainState
    abstract_state: TrainState
    tx: object
    train_step: object
    eval_step: object


def build(cfg: Config, mesh, stacked: int = 0) -> Pieces:
    """The run's pieces; with `stacked` = N, for N runs' states stacked on a new leading axis laid along
    the `runs` axis of `mesh` (sharding.runs_mesh; each run is laid out as it would be alone), and steps
    vmapped over it."""
    graphdef, abstract_params = nnx.split(abstract_model(cfg.model), nnx.Param)
    tx = optim.make(cfg.train)
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    replicated = sharding.NamedSharding(mesh, sharding.P())
    shardings = TrainState(replicated, sharding.tree_shardings(abstract_params, mesh),
                           sharding.tree_shardings(abstract_opt, mesh), replicated)
    abstract = TrainState(jax.ShapeDtypeStruct((), jnp.int32), abstract_params, abstract_opt,
                          jax.ShapeDtypeStruct((2,), jnp.uint32))
    if stacked:
        shardings = jax.tree.map(lambda s: sharding.NamedSharding(s.mesh, sharding.P(sharding.RUNS, *s.spec)),
                                 shardings)
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct((stacked, *a.shape), a.dtype), abstract)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    return Pieces(graphdef, shardings, abstract, tx,
                  jit_train_step(graphdef, tx, optim.schedule(cfg.train), shardings, mesh,
                                 skip_nonfinite=cfg.train.on_nonfinite == "skip", stacked=bool(stacked)),
                  jit_eval_step(graphdef, mesh, stacked=bool(stacked)))


def init_state(cfg: Config, pieces: Pieces, params: nnx.State | None = None) -> TrainState:
    """A fresh optimizer around fresh parameters (or given ones: a fine-tune), created in their sharded places."""
    def init(seed, params):
        if params is None:
            params = nnx.state(GPT(cfg.model, rngs=nnx.Rngs(params=jax.random.key(seed))), nnx.Param)
        return TrainState(jnp.zeros((), jnp.int32), params, pieces.tx.init(params), initial_rng(seed))
    if params is not None:  # loaded on one device (a converted checkpoint): lay it out as the run's mesh wants
        params = jax.device_put(params, pieces.state_shardings.params)
    # The seed is an argument, not a constant baked into the program, so runs that differ only
    # in seed (a sweep's) compile the same init and JAX's compilation cache can serve it.
    return jax.jit(init, out_shardings=pieces.state_shardings)(np.int64(cfg.train.seed), params)


def state_bytes(pieces: Pieces) -> int:
    """What one checkpoint of this model takes on disk (parameters and optimizer state, uncompressed)."""
    leaves = jax.tree.leaves((pieces.abstract_state.params, pieces.abstract_state.opt_state))
    return sum(math.prod(a.shape) * a.dtype.itemsize for a in leaves)


def restore_state(ckpts: Checkpoints, step: int, pieces: Pieces) -> TrainState:
    abstract = pieces.abstract_state
    # A converted checkpoint (gptjax.convert) holds weights only: training starts a fresh optimizer on them.
    weights_only = ckpts.meta(step).get("opt_state") is False
    params, opt_state, meta = ckpts.restore(step, abstract.params, None if weights_only else abstract.opt_state)
    if weights_only:
        opt_state = jax.jit(pieces.tx.init, out_shardings=pieces.state_shardings.opt_state)(params)
    rng = jax.device_put(np.asarray(meta["rng"], np.uint32), pieces.state_shardings.rng)
    return TrainState(jax.device_put(jnp.int32(meta["step"]), pieces.state_shardings.step), params, opt_state, rng)


def resume(ckpts: Checkpoints, pieces: Pieces) -> tuple[TrainState | None, int]:
    """The newest checkpoint that restores intact; damaged newer ones are set aside with a warning."""
    damaged = []
    for step in reversed(ckpts.steps()):
        try:
            state = restore_state(ckpts, step, pieces)
        except CheckpointError as e:
            damaged.append((step, e))
            continue
        if damaged:
            where = ckpts.set_aside([s for s, _ in damaged])
            for _, e in damaged:
                _warn(f"{e}; resuming from step {step} instead (the damaged one is kept in {where})")
        return state, step
    if damaged:
        raise CheckpointError(f"{damaged[0][1]}; no checkpoint of this run restores (all are kept as they are); "
                              f"use another run.out_dir to train from scratch") from None
    return None, 0


def _warn(text: str) -> None:
    if jax.process_index() == 0:
        print(f"warning: {text}", file=sys.stderr)


def save(ckpts: Checkpoints, cfg: Config, state: TrainState, step: int, row: dict) -> None:
    meta = {"step": step, "rng": np.asarray(jax.device_get(state.rng)).tolist(), "config": cfg.to_dict(),
            "val_loss": row.get("val_loss"), "train_loss": row.get("train_loss")}
    ckpts.save(step, state.params, state.opt_state, meta, row.get("val_loss"))
