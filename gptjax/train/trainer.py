"""The training loop: data and mesh from a config; restore or init; train, evaluate, checkpoint.

Every step is checked for a non-finite loss, gradient or parameter. The flags stay on the
device until a log or checkpoint step reads them all at once, so the host never waits on
the device just to check; the step named is still the one where the problem appeared,
and a checkpoint is only written after every step before it has been checked.
"""

from __future__ import annotations

import errno
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from gptjax import data, sharding
from gptjax.config import Config, ConfigError
from gptjax.errors import UserError
from gptjax.train import finetune, optim
from gptjax.train.checkpoint import CHECKPOINT_DIR, Checkpoints
from gptjax.train.runs import RunError, check_disk_space, check_memory, check_run_dir, lock, write_run_files
from gptjax.train.state import Pieces, build, init_state, restore_state, resume, save, state_bytes
from gptjax.train.step import TrainState
from gptjax.train.stopping import Interrupted, StopRequests
from gptjax.train.tracking import Clock, Tracker


class TrainingError(UserError):
    """Training cannot go on as configured (a non-finite loss or gradient); the message names the step."""


def evaluate(cfg: Config, ds: data.Dataset, mesh, eval_step, params) -> dict[str, float]:
    """Mean loss over fixed batches of each split: the same batches at every evaluation."""
    out = {}
    rows = sharding.process_rows(cfg.train.micro_batch_size, mesh)
    for split in ("train", "val"):
        tokens = ds.split(split)
        losses = []
        for i in range(cfg.train.eval_batches):
            x, y = eval_batch(cfg, tokens, i, rows)
            losses.append(eval_step(params, sharding.put_batch(x, mesh), sharding.put_batch(y, mesh)))
        out[f"{split}_loss"] = float(jnp.mean(jnp.stack(losses)))
    return out


def eval_batch(cfg: Config, tokens, i: int, rows=slice(None)) -> tuple[np.ndarray, np.ndarray]:
    """Evaluation batch i of a split (this process's `rows`): fixed windows, the same at every evaluation."""
    starts = data.window_starts(len(tokens), seed=cfg.train.seed, step=i, stream=data.EVAL_STREAM,
                                batch_size=cfg.train.micro_batch_size, n_ctx=cfg.model.n_ctx)[rows]
    return data.gather(tokens, starts, cfg.model.n_ctx)


def train_batch(cfg: Config, ds: data.Dataset, step: int, mesh):
    """Step `step`'s batch as [grad_accum, micro_batch, n_ctx], this process's rows only."""
    t = cfg.train
    starts = data.window_starts(len(ds.train), seed=t.seed, step=step, batch_size=t.batch_size, n_ctx=cfg.model.n_ctx)
    starts = starts.reshape(t.grad_accum, t.micro_batch_size)[:, sharding.process_rows(t.micro_batch_size, mesh)]
    x, y = data.gather(ds.train, starts, cfg.model.n_ctx)
    return sharding.put_batch(x, mesh), sharding.put_batch(y, mesh)


def show_data_progress(p: data.Progress) -> None:
    """Data preparation's progress bar on stderr, redrawn in place."""
    print(f"\r{p.line()}", end="\n" if p.stage == "done" else "", file=sys.stderr, flush=True)


def setup(cfg: Config):
    """Data, resolved config and mesh, checked before the run directory is touched."""
    ds = data.prepare(cfg.data, progress=show_data_progress if jax.process_index() == 0 else None)
    cfg = cfg.resolve_vocab(ds.vocab_size)
    data.check_fits(ds, cfg.model.n_ctx)
    mesh = sharding.make_mesh(cfg.mesh, sharding.mesh_devices(cfg.mesh, cfg.train.micro_batch_size))
    shards = sharding.n_batch_shards(mesh)
    if cfg.train.micro_batch_size % shards:
        raise ConfigError(f"micro-batch of {cfg.train.micro_batch_size} sequences (train.batch_size / "
                          f"train.grad_accum) does not split over {shards} devices; make it a multiple of {shards}")
    return cfg, ds, mesh


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
    source = None
    if cfg.train.init_from:
        source = finetune.open_source(cfg.train.init_from)
        cfg = source.apply(cfg)  # the model's shape is the source's
    cfg, ds, mesh = setup(cfg)
    if source:
        source.check_tokenizer(ds.tokenizer)
    run_dir = check_run_dir(cfg, ds)
    check_memory(cfg, mesh)  # before build: a model too big to hold takes long to even trace
    pieces = build(cfg, mesh)
    check_disk_space(run_dir, state_bytes(pieces), cfg.run.keep_checkpoints)
    held = lock(run_dir) if sharding.is_main_process() else None  # until this process ends
    existed = (run_dir / CHECKPOINT_DIR).is_dir()
    sharding.sync("run directory checked")  # every process looks before process 0 writes anything
    # Orbax saves and restores collectively: every process opens, restores and saves alike.
    ckpts = Checkpoints(run_dir, cfg.run.keep_checkpoints) if existed else None
    state, start = resume(ckpts, pieces) if ckpts else (None, 0)
    resumed = state is not None
    if not resumed:  # a started run resumes, whatever train.init_from says
        state = init_state(cfg, pieces, source.params(pieces.abstract_state.params) if source else None)
    if sharding.is_main_process():
        write_run_files(run_dir, cfg, ds.tokenizer, ds.meta.get("source_id"))
    ckpts = ckpts or Checkpoints(run_dir, cfg.run.keep_checkpoints)
    tracker = Tracker(run_dir, cfg, start, cfg.train.steps, resumed=resumed)
    if resumed and start < cfg.train.steps:
        tracker.message(f"resuming from step {start} of {cfg.train.steps}")
    try:
        # Several processes would each stop at the step their signal came, and their collective saves
        # would never meet: there, a signal kills as before and the last checkpoint is where it resumes.
        with StopRequests(active=jax.process_count() == 1) as stop:
            return Loop(cfg, ds, mesh, pieces, ckpts, tracker, stop).run(state, start)
    finally:
        try:
            ckpts.close()
        finally:
            tracker.close()
            if held:
                held.close()


class Loop:
    """Steps from a state to cfg.train.steps: log, evaluate, checkpoint, and act on non-finite steps."""

    def __init__(self, cfg: Config, ds: data.Dataset, mesh, pieces: Pieces, ckpts: Checkpoints, tracker: Tracker,
                 stop: StopRequests | None = None):
        self.cfg, self.ds, self.mesh, self.pieces, self.ckpts, self.tracker = cfg, ds, mesh, pieces, ckpts, tracker
        self.stop = stop or StopRequests()
        self.pending: list[tuple[int, jax.Array]] = []  # (step, finite flag on device) not read yet
        self.rolled_back: set[int] = set()  # bad steps already retried once
        self.skipped = 0  # updates skipped since the last log line
        self.skipped_in_a_row = 0
        self.clock = Clock()

    def run(self, state: TrainState, start: int) -> dict:
        t, last = self.cfg.train, {}
        if start == 0:  # the untrained model, keyed as on every eval step
            last = {"step": 0, "train_loss": self.first_batch_loss(state), "lr": float(optim.schedule(t)(0)),
                    **self.eval_losses(state)}
            self.tracker.log(0, last)
        elif start >= t.steps:
            self.tracker.message(f"{self.cfg.run.out_dir} is already trained to step {start} (train.steps={t.steps})")
        step = start
        self.clock.restart()
        while step < t.steps:
            state, metrics = self.pieces.train_step(state, *train_batch(self.cfg, self.ds, step, self.mesh))
            step += 1
            self.pending.append((step, metrics.pop("finite")))
            self.tracker.advance()
            self.clock.tick(state, first=step == start + 1)
            is_eval = step % t.eval_every == 0 or step == t.steps
            is_log, is_save = is_eval or step % t.log_every == 0, is_eval or step % t.save_every == 0
            stopping = self.stop.signum is not None  # read once: a signal may land mid-iteration
            is_save = is_save or stopping
            if not (is_log or is_save):
                continue
            state, back = self.check(state, step)
            if back is not None:  # rolled back: train those steps again
                step = back
                self.clock.restart()
                continue
            if is_log:  # before the save: a kill between the two drops this line on resume
                last = self.log(state, step, metrics, is_eval)
            if is_save:
                save(self.ckpts, self.cfg, state, step, last if last.get("step") == step else {})
            if stopping:
                self.interrupted(step)
        if self.stop.signum is not None:  # the signal came after the last step: it is saved
            self.interrupted(step)
        return last

    def interrupted(self, step: int):
        self.ckpts.manager.wait_until_finished()
        newest = self.ckpts.latest_step()
        where = (f"saved step {newest}; re-run the same command to resume from step {newest}" if newest
                 else "nothing was saved; re-run the same command to start again")
        raise Interrupted(where, self.stop.signum)

    def log(self, state: TrainState, step: int, metrics: dict, is_eval: bool) -> dict:
        row = {"step": step, **{k: float(v) for k, v in jax.device_get(metrics).items()},
               **self.clock.read(self.cfg.tokens_per_step)}
        row |= self.eval_row(state, step) if is_eval else {}
        row |= {"skipped_steps": self.skipped} if self.skipped else {}
        self.skipped = 0
        self.tracker.log(step, row)
        return row

    def first_batch_loss(self, state: TrainState) -> float:
        """Step 0's train_loss: step 0's batch at the initial parameters, as every row's is its batch's before
        the update (the contract keeps train_loss on every row; without dropout, as at evaluation)."""
        t, n_ctx = self.cfg.train, self.cfg.model.n_ctx
        starts = data.window_starts(len(self.ds.train), seed=t.seed, step=0, batch_size=t.batch_size, n_ctx=n_ctx)
        rows = sharding.process_rows(t.micro_batch_size, self.mesh)  # placed per micro-batch: multi-host safe
        losses = []
        for micro in starts.reshape(t.grad_accum, t.micro_batch_size)[:, rows]:
            x, y = data.gather(self.ds.train, micro, n_ctx)
            losses.append(self.pieces.eval_step(state.params, sharding.put_batch(x, self.mesh),
                                                sharding.put_batch(y, self.mesh)))
        return float(jnp.mean(jnp.stack(losses)))

    def eval_losses(self, state: TrainState) -> dict[str, float]:
        """eval_train_loss and val_loss (`train_loss` is the step's own training loss), and eval_s.

        The clock restarts after it, so tokens_per_sec counts training alone: at a large vocabulary
        an evaluation can take longer than the steps between two of them.
        """
        start = time.perf_counter()
        losses = evaluate(self.cfg, self.ds, self.mesh, self.pieces.eval_step, state.params)
        self.clock.restart()
        return {**{k.replace("train_loss", "eval_train_loss"): v for k, v in losses.items()},
                "eval_s": time.perf_counter() - start}

    def eval_row(self, state: TrainState, step: int) -> dict[str, float]:
        row = self.eval_losses(state)
        self.tracker.message(f"step {step}: train loss {row['eval_train_loss']:.4f}, val loss {row['val_loss']:.4f}")
        return row

    def check(self, state: TrainState, step: int) -> tuple[TrainState, int | None]:
        """Read the pending finite flags; on a bad step act as train.on_nonfinite says.

        Returns the state to go on with and, after a rollback, the step it is at.
        """
        flags = jax.device_get([flag for _, flag in self.pending])
        bad = [s for (s, _), ok in zip(self.pending, flags) if not ok]
        self.pending = []
        self.skipped_in_a_row = _in_a_row(flags, self.skipped_in_a_row)
        if not bad:
            return state, None
        mode = self.cfg.train.on_nonfinite
        what = f"non-finite loss or gradients at step {bad[0]}" + (
            f" (and {len(bad) - 1} more steps up to {bad[-1]})" if len(bad) > 1 else "")
        if mode == "skip" and self.skipped_in_a_row > self.cfg.train.max_skips:
            self.ckpts.manager.wait_until_finished()
            newest = self.ckpts.latest_step()
            kept = f"the newest checkpoint is step {newest}" if newest else "no checkpoint was saved"
            raise TrainingError(f"{self.skipped_in_a_row} updates in a row skipped up to step {bad[-1]} "
                                f"(train.max_skips={self.cfg.train.max_skips}); training stopped and {kept}; "
                                f"lower train.lr or raise train.warmup_steps")
        if mode == "skip":  # the jitted step already kept the old state for these steps
            self.skipped += len(bad)
            plural = "s" if len(bad) > 1 else ""
            self.tracker.message(f"warning: {what}; update{plural} skipped (train.on_nonfinite=skip)")
            return state, None
        self.ckpts.manager.wait_until_finished()
        newest = self.ckpts.latest_step()
        if mode == "rollback" and bad[0] not in self.rolled_back:
            self.rolled_back.add(bad[0])
            state = restore_state(self.ckpts, newest, self.pieces) if newest else init_state(self.cfg, self.pieces)
            self.tracker.message(f"warning: {what}; rolling back to step {newest or 0} (train.on_nonfinite=rollback)")
            self.tracker.rewind(newest or 0)
            return state, newest or 0
        again = f" again after rolling back to step {newest or 0}" if mode == "rollback" else ""
        kept = f"the newest checkpoint is step {newest}, from before it" if newest else "no checkpoint was saved"
        raise TrainingError(f"{what}{again}; training stopped and {kept}; lower train.lr, raise "
                            f"train.warmup_steps, or set train.on_nonfinite=skip")


def _in_a_row(flags: list, before: int) -> int:
    """Non-finite steps at the end of `flags` (continuing `before` if all of them are)."""
    run = before
    for ok in flags:
        run = 0 if ok else run + 1
    return run


