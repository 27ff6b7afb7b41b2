"""Training a run: data and mesh from a config, its run directory checked and held, a state restored or
made, then the loop (gptjax.train.loop) to train.steps."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import sys
from pathlib import Path

import jax

from gptjax import data, errors, sharding
from gptjax.config import Config, ConfigError, warmup
from gptjax.train import finetune, optim
from gptjax.train.checkpoint import CHECKPOINT_DIR, Checkpoints
from gptjax.train.loop import Loop, TrainingError, eval_batch, evaluate, train_batch  # noqa: F401 (the trainer's API)
from gptjax.train.resources import check_disk_space, check_memory
from gptjax.train.runs import RunError, check_run_dir, lock, write_run_files
from gptjax.train.state import Pieces, build, init_state, restore_state, resume, save, state_bytes  # noqa: F401
from gptjax.train.step import TrainState
from gptjax.train.stopping import KeptInterrupt, StopRequests
from gptjax.train.tracking import Tracker


def show_data_progress(p: data.Progress) -> None:
    """Data preparation's progress bar on stderr, redrawn in place; a note gets its own line."""
    errors.show_progress(p.line(), done=p.stage in ("done", "note"))


def prepare_data(cfg: Config) -> data.Dataset:
    """The run's data, prepared (or read from the cache) with Ctrl-C kept: it always stops the command."""
    with KeptInterrupt() as interrupt:
        def progress(p: data.Progress) -> None:
            interrupt.check()
            if jax.process_index() == 0:
                show_data_progress(p)
        return data.prepare(cfg.data, progress=progress)


def setup(cfg: Config):
    """Data, resolved config and mesh, checked before the run directory is touched."""
    ds = prepare_data(cfg)
    cfg = cfg.resolve_vocab(ds.vocab_size).resolve_steps()  # a compute budget's steps need the vocabulary
    budget = cfg.train.flops_budget or cfg.train.tokens_per_param
    data.check_fits(ds, cfg.model.n_ctx)
    step_flops = cfg.model.flops_per_token() * cfg.tokens_per_step
    devices = sharding.mesh_devices(cfg.mesh, cfg.train.micro_batch_size, step_flops,
                                    optim.replicated_flops(cfg.model, cfg.train))
    if sharding.split_by_gptjax(devices) and warmup.segments(cfg, len(devices)) != warmup.segments(cfg):
        devices = devices[:1]  # the split would round the warm-up's batches: a speed-up must not change the run
    mesh = sharding.make_mesh(cfg.mesh, devices)
    shards = sharding.n_batch_shards(mesh)
    if cfg.train.micro_batch_size % shards:
        raise ConfigError(f"micro-batch of {cfg.train.micro_batch_size} sequences (train.batch_size / "
                          f"train.grad_accum) does not split over {shards} devices; make it a multiple of {shards}")
    if budget and warmup.segments(cfg, shards) != warmup.segments(cfg):
        raise ConfigError(f"train.batch_warmup_steps: a quarter or half batch of train.batch_size="
                          f"{cfg.train.batch_size} is rounded to split over {shards} devices, which the compute "
                          f"budget did not count; make train.batch_size a multiple of "
                          f"{4 * cfg.train.grad_accum * shards} or set train.steps instead of a budget")
    if budget and jax.process_index() == 0:
        print(budget_line(cfg), file=sys.stderr)
    return cfg, ds, mesh


def budget_line(cfg: Config) -> str:
    """What a compute budget bought, said once on stderr."""
    flops, n = warmup.flops_before(cfg, cfg.train.steps), f"(N = {cfg.model.n_compute_params:,} parameters)"
    if cfg.train.batch_warmup_steps or cfg.train.seq_warmup_steps:
        return (f"budget: {cfg.train.steps} steps, {warmup.tokens_before(cfg, cfg.train.steps):,} tokens with the "
                f"warm-up's smaller batches = {flops:.3g} FLOPs {n}")
    return (f"budget: {cfg.train.steps} steps x {cfg.tokens_per_step:,} tokens x {cfg.model.flops_per_token():,} "
            f"FLOPs per token = {flops:.3g} FLOPs {n}")


def train(cfg: Config) -> dict:
    """Train (or resume) the run in cfg.run.out_dir to cfg.train.steps; returns the last logged row."""
    try:
        return _train(cfg)
    except OSError as e:  # metrics.jsonl or wandb on a full disk (checkpoint writes say so themselves)
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise
        raise RunError(f"cannot write in {cfg.run.out_dir}: {e.strerror}; the checkpoints already saved are intact: "
                       f"free some space and re-run the same command to resume") from None


def _train(cfg: Config) -> dict:
    cfg, source = open_source(cfg)
    cfg, ds, mesh = setup(cfg)
    if source:
        source.check_tokenizer(ds.tokenizer)
    check_run_dir(cfg, ds)
    check_memory(cfg, mesh)  # before build: a model too big to hold takes long to even trace
    pieces = build(cfg, mesh)
    with contextlib.ExitStack() as closing:
        run = open_run(cfg, ds, pieces, source, closing)
        if note := sharding.split_note(mesh):
            run.tracker.message(note)
        with stop_requests() as stop:
            return Loop(cfg, ds, mesh, pieces, run.ckpts, run.tracker, stop).run(run.state, run.start)


def open_source(cfg: Config) -> tuple[Config, finetune.Source | None]:
    """train.init_from's checkpoint, if any, and the config with the model's shape taken from it."""
    if not cfg.train.init_from:
        return cfg, None
    source = finetune.open_source(cfg.train.init_from)
    return source.apply(cfg), source


def stop_requests() -> StopRequests:
    # Several processes would each stop at the step their signal came, and their collective saves
    # would never meet: there, a signal kills as before and the last checkpoint is where it resumes.
    return StopRequests(active=jax.process_count() == 1)


@dataclasses.dataclass
class OpenRun:
    ckpts: Checkpoints
    tracker: Tracker
    state: TrainState  # where training goes on from: the newest checkpoint's, or a new run's first
    start: int


def open_run(cfg: Config, ds: data.Dataset, pieces: Pieces, source, closing: contextlib.ExitStack,
             progress: bool = True) -> OpenRun:
    """A checked run directory (check_run_dir) held for this process, its checkpoints and metrics open until
    `closing` closes, and the state to train from. Nothing is written in it before the state is in hand."""
    run_dir = Path(cfg.run.out_dir)
    check_disk_space(run_dir, state_bytes(pieces), cfg.run.keep_checkpoints)
    if sharding.is_main_process():
        closing.callback(lock(run_dir).close)
    existed = (run_dir / CHECKPOINT_DIR).is_dir()
    sharding.sync("run directory checked")  # every process looks before process 0 writes anything
    # Orbax saves and restores collectively: every process opens, restores and saves alike.
    ckpts = closing.enter_context(Checkpoints(run_dir, cfg.run.keep_checkpoints)) if existed else None
    state, start = resume(ckpts, pieces) if ckpts else (None, 0)
    resumed = state is not None
    if not resumed:  # a started run resumes, whatever train.init_from says
        state = init_state(cfg, pieces, source.params(pieces.abstract_state.params) if source else None)
    if sharding.is_main_process():
        write_run_files(run_dir, cfg, ds.tokenizer, ds.meta.get("source_sha256"))
    ckpts = ckpts or closing.enter_context(Checkpoints(run_dir, cfg.run.keep_checkpoints))
    if not progress:
        cfg = cfg.replace(run={"progress": False})
    tracker = Tracker(run_dir, cfg, start, cfg.train.steps)
    closing.callback(tracker.close)
    if resumed and start < cfg.train.steps:
        tracker.message(f"resuming from step {start} of {cfg.train.steps}")
    return OpenRun(ckpts, tracker, state, start)
