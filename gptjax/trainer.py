"""The training loop: data, model and optimizer from a config; restore or init; train, evaluate, checkpoint."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from flax import nnx

from gptjax import data, optim, sharding
from gptjax.checkpoint import Checkpoints
from gptjax.config import Config, ConfigError
from gptjax.errors import UserError
from gptjax.model import GPT
from gptjax.tracking import Tracker
from gptjax.train_step import TrainState, jit_eval_step, jit_train_step

CONFIG_FILE = "config.yaml"
TOKENIZER_FILE = "tokenizer.json"


class RunError(UserError):
    """A run directory or setup that cannot be used as asked; the message says how to fix it."""


def resolve_vocab(cfg: Config, data_vocab: int) -> Config:
    """model.n_vocab defaults to the data's vocabulary; smaller is an error, larger pads."""
    if cfg.model.n_vocab is None:
        return cfg.replace(model={"n_vocab": data_vocab})
    if cfg.model.n_vocab < data_vocab:
        raise ConfigError(f"model.n_vocab={cfg.model.n_vocab} is smaller than the data's vocabulary of "
                          f"{data_vocab}; remove model.n_vocab or set it to at least {data_vocab}")
    return cfg


@dataclasses.dataclass
class Pieces:
    """Everything built once per run: static structure, placements and the compiled steps."""
    graphdef: nnx.GraphDef
    state_shardings: TrainState
    abstract_state: TrainState
    tx: object
    train_step: object
    eval_step: object


def build(cfg: Config, mesh) -> Pieces:
    graphdef, abstract_params = nnx.split(nnx.eval_shape(lambda: GPT(cfg.model, rngs=nnx.Rngs(0))), nnx.Param)
    tx = optim.make(cfg.train)
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    replicated = sharding.NamedSharding(mesh, sharding.P())
    shardings = TrainState(replicated, sharding.tree_shardings(abstract_params, mesh),
                           sharding.tree_shardings(abstract_opt, mesh), replicated)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            TrainState(jax.ShapeDtypeStruct((), jnp.int32), abstract_params, abstract_opt,
                                       jax.ShapeDtypeStruct((2,), jnp.uint32)), shardings)
    return Pieces(graphdef, shardings, abstract, tx,
                  jit_train_step(graphdef, tx, optim.schedule(cfg.train), shardings, mesh), jit_eval_step(graphdef, mesh))


def initial_rng(seed) -> jax.Array:
    return jax.random.key_data(jax.random.fold_in(jax.random.PRNGKey(seed), 1))


def init_state(cfg: Config, pieces: Pieces, params: nnx.State | None = None) -> TrainState:
    """A fresh optimizer around fresh parameters (or given ones: a fine-tune), created in their sharded places."""
    def init(seed, params):
        if params is None:
            params = nnx.state(GPT(cfg.model, rngs=nnx.Rngs(params=jax.random.key(seed))), nnx.Param)
        return TrainState(jnp.zeros((), jnp.int32), params, pieces.tx.init(params), initial_rng(seed))
    # The seed is an argument, not a constant baked into the program, so runs that differ only
    # in seed (a sweep's) compile the same init and JAX's compilation cache can serve it.
    return jax.jit(init, out_shardings=pieces.state_shardings)(np.int64(cfg.train.seed), params)


def restore_state(ckpts: Checkpoints, step: int, pieces: Pieces) -> TrainState:
    abstract = pieces.abstract_state
    # A converted checkpoint (gptjax.convert) holds weights only: training starts a fresh optimizer on them.
    weights_only = ckpts.meta(step).get("opt_state") is False
    params, opt_state, meta = ckpts.restore(step, abstract.params, None if weights_only else abstract.opt_state)
    if weights_only:
        opt_state = jax.jit(pieces.tx.init, out_shardings=pieces.state_shardings.opt_state)(params)
    rng = jax.device_put(np.asarray(meta["rng"], np.uint32), pieces.state_shardings.rng)
    return TrainState(jax.device_put(jnp.int32(meta["step"]), pieces.state_shardings.step), params, opt_state, rng)


def check_run_dir(cfg: Config) -> Path:
    """The run directory, checked before anything is written: writable, and holding this model if any."""
    run_dir = Path(cfg.run.out_dir)
    saved = run_dir / CONFIG_FILE
    if saved.is_file():
        old = yaml.safe_load(saved.read_text())
        new = cfg.to_dict()
        for section, keys in (("model", None), ("data", ("source", "tokenizer", "val_fraction", "text_field"))):
            for key in keys or new[section]:
                if old.get(section, {}).get(key) != new[section][key]:
                    raise RunError(f"{run_dir} holds a run with {section}.{key}={old[section].get(key)!r}, but this "
                                   f"config says {new[section][key]!r}; use another run.out_dir to start a new run")
    probe = run_dir if run_dir.exists() else next(p for p in run_dir.absolute().parents if p.exists())
    if not os.access(probe, os.W_OK) or (run_dir.exists() and not run_dir.is_dir()):
        raise RunError(f"run directory {run_dir} is not writable; set run.out_dir to a folder you can write")
    return run_dir


def write_run_files(run_dir: Path, cfg: Config, tokenizer) -> None:
    import json

    run_dir.mkdir(parents=True, exist_ok=True)
    for name, text in ((CONFIG_FILE, cfg.to_yaml()), (TOKENIZER_FILE, json.dumps(tokenizer.to_json()))):
        tmp = run_dir / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, run_dir / name)


def evaluate(cfg: Config, ds: data.Dataset, mesh, eval_step, params) -> dict[str, float]:
    """Mean loss over fixed batches of each split: the same batches at every evaluation."""
    out = {}
    rows = sharding.process_rows(cfg.train.micro_batch_size, mesh)
    for split in ("train", "val"):
        tokens = ds.split(split)
        losses = []
        for i in range(cfg.train.eval_batches):
            starts = data.window_starts(len(tokens), seed=cfg.train.seed, step=i, stream=data.EVAL_STREAM,
                                        batch_size=cfg.train.micro_batch_size, n_ctx=cfg.model.n_ctx)[rows]
            x, y = data.gather(tokens, starts, cfg.model.n_ctx)
            losses.append(eval_step(params, sharding.put_batch(x, mesh), sharding.put_batch(y, mesh)))
        out[f"{split}_loss"] = float(jnp.mean(jnp.stack(losses)))
    return out


def train_batch(cfg: Config, ds: data.Dataset, step: int, mesh):
    """Step `step`'s batch as [grad_accum, micro_batch, n_ctx], this process's rows only."""
    t = cfg.train
    starts = data.window_starts(len(ds.train), seed=t.seed, step=step, batch_size=t.batch_size, n_ctx=cfg.model.n_ctx)
    starts = starts.reshape(t.grad_accum, t.micro_batch_size)[:, sharding.process_rows(t.micro_batch_size, mesh)]
    x, y = data.gather(ds.train, starts, cfg.model.n_ctx)
    return sharding.put_batch(x, mesh), sharding.put_batch(y, mesh)


def setup(cfg: Config):
    """Data, resolved config and mesh, checked before the run directory is touched."""
    ds = data.prepare(cfg.data)
    cfg = resolve_vocab(cfg, ds.vocab_size)
    data.check_fits(ds, cfg.model.n_ctx)
    mesh = sharding.make_mesh(cfg.mesh)
    shards = sharding.n_batch_shards(mesh)
    if cfg.train.micro_batch_size % shards:
        raise ConfigError(f"micro-batch of {cfg.train.micro_batch_size} sequences (train.batch_size / "
                          f"train.grad_accum) does not split over {shards} devices; make it a multiple of {shards}")
    return cfg, ds, mesh


def train(cfg: Config) -> dict:
    """Train (or resume) the run in cfg.run.out_dir to cfg.train.steps; returns the last logged row."""
    source = None
    if cfg.train.init_from:
        from gptjax import convert  # here, not at the top: convert reads runs through runs.py, which imports us

        source = convert.open_source(cfg.train.init_from)
        cfg = source.apply(cfg)  # the model's shape is the source's
    cfg, ds, mesh = setup(cfg)
    if source:
        source.check_tokenizer(ds.tokenizer)
    run_dir = check_run_dir(cfg)
    pieces = build(cfg, mesh)
    existed = run_dir.exists()
    sharding.sync("run directory checked")  # every process looks before process 0 writes anything
    # Orbax saves and restores collectively: every process opens, restores and saves alike.
    ckpts = Checkpoints(run_dir, cfg.run.keep_checkpoints) if existed else None
    start = ckpts.latest_step() if ckpts else None
    if start is not None:  # a started run resumes, whatever train.init_from says
        state = restore_state(ckpts, start, pieces)
    else:
        state = init_state(cfg, pieces, source.params(pieces.abstract_state.params) if source else None)
    if sharding.is_main_process():
        write_run_files(run_dir, cfg, ds.tokenizer)
    ckpts = ckpts or Checkpoints(run_dir, cfg.run.keep_checkpoints)
    start = start or 0
    tracker = Tracker(run_dir, cfg, start, cfg.train.steps)
    try:
        return _loop(cfg, ds, mesh, pieces, ckpts, tracker, state, start)
    finally:
        ckpts.close()
        tracker.close()


def _loop(cfg, ds, mesh, pieces, ckpts, tracker, state, start) -> dict:
    t = cfg.train
    row, last = {}, {}
    if start == 0:
        last = {"step": 0, **evaluate(cfg, ds, mesh, pieces.eval_step, state.params)}
        tracker.log(0, last)
    elif start >= t.steps:
        tracker.message(f"{cfg.run.out_dir} is already trained to step {start} (train.steps={t.steps})")
    timer, timed_steps = time.perf_counter(), 0
    for step in range(start, t.steps):
        x, y = train_batch(cfg, ds, step, mesh)
        state, metrics = pieces.train_step(state, x, y)
        done, timed_steps = step + 1, timed_steps + 1
        tracker.advance()
        is_eval = done % t.eval_every == 0 or done == t.steps
        if step == start:  # the first step compiles: time it apart from the throughput
            jax.block_until_ready(state)
            row = {"compile_s": time.perf_counter() - timer}
            timer, timed_steps = time.perf_counter(), 0
        if done % t.log_every == 0 or is_eval:
            row = {"step": done, **row, **{k: float(v) for k, v in jax.device_get(metrics).items()}}
            if timed_steps:
                row["tokens_per_sec"] = timed_steps * cfg.tokens_per_step / (time.perf_counter() - timer)
            if is_eval:
                row |= {k.replace("train_loss", "eval_train_loss"): v
                        for k, v in evaluate(cfg, ds, mesh, pieces.eval_step, state.params).items()}
                save(ckpts, cfg, state, done, row)
                tracker.message(f"step {done}: train loss {row['eval_train_loss']:.4f}, val loss {row['val_loss']:.4f}")
            tracker.log(done, row)
            last, row, timer, timed_steps = row, {}, time.perf_counter(), 0
    return last


def save(ckpts: Checkpoints, cfg: Config, state: TrainState, step: int, row: dict) -> None:
    meta = {"step": step, "rng": np.asarray(jax.device_get(state.rng)).tolist(), "config": cfg.to_dict(),
            "val_loss": row.get("val_loss"), "train_loss": row.get("train_loss")}
    ckpts.save(step, state.params, state.opt_state, meta, row.get("val_loss"))
