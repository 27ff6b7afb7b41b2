"""The training loop: steps from a state to train.steps; log, evaluate, checkpoint, and act on non-finite steps.

Every step is checked for a non-finite loss, gradient or parameter. The flags stay on the
device until a log or checkpoint step reads them all at once, so the host never waits on
the device just to check; the step named is still the one where the problem appeared,
and a checkpoint is only written after every step before it has been checked.

`Loop` drives one run. What depends on how many runs one state holds (batches, log lines,
saves, restores) sits in the small methods a subclass overrides: gptjax.train.seeds trains
the seeds of a run together with the same loop.
"""

from __future__ import annotations

import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from gptjax import data, sharding
from gptjax.config import Config, warmup
from gptjax.data import tokenizer as tokenizers
from gptjax.errors import UserError
from gptjax.train.checkpoint import Checkpoints
from gptjax.train.pacing import Paced
from gptjax.train.state import Pieces, init_state, restore_state, save
from gptjax.train.step import TrainState
from gptjax.train.stopping import Interrupted, StopRequests
from gptjax.train.tracking import Clock, Tracker


class TrainingError(UserError):
    """Training cannot go on as configured (a non-finite loss or gradient); the message names the step."""


def evaluate(cfg: Config, ds: data.Dataset, mesh, eval_step, params, report=None) -> dict[str, float]:
    """Mean loss (train_loss, val_loss) and bits per byte (train_bpb, val_bpb) over fixed batches of each
    split: the same batches at every evaluation.

    report(done, total) hears of each batch as it finishes, one behind the one being dispatched
    so the device always has the next: at a large vocabulary on a CPU an evaluation takes minutes.
    """
    out = {}
    rows = sharding.process_rows(cfg.train.micro_batch_size, mesh)
    n, paced = cfg.train.eval_batches, Paced()
    for k, split in enumerate(("train", "val")):
        tokens = ds.split(split)
        losses = []
        for i in range(n):
            x, y = eval_batch(cfg, tokens, i, rows)
            losses.append(paced.add(eval_step(params, sharding.put_batch(x, mesh), sharding.put_batch(y, mesh))))
            if report and i:
                losses[-2].block_until_ready()
                report(k * n + i, 2 * n)
        out[f"{split}_loss"] = float(jnp.mean(jnp.stack(losses)))
        out[f"{split}_bpb"] = bits_per_byte(cfg, out[f"{split}_loss"], eval_bytes(cfg, ds, split))
    return out


def eval_bytes(cfg: Config, ds: data.Dataset, split: str) -> int:
    """UTF-8 bytes of the text that a split's evaluation targets (every batch, every row) decode to."""
    table, tokens = tokenizers.token_bytes(ds.tokenizer), ds.split(split)
    return int(sum(table[eval_batch(cfg, tokens, i)[1]].sum() for i in range(cfg.train.eval_batches)))


def bits_per_byte(cfg: Config, mean_loss: float, n_bytes: int) -> float:
    """The evaluation's summed nats / ln 2 / its targets' bytes: a loss that compares across tokenizers."""
    n_tokens = cfg.train.eval_batches * cfg.train.micro_batch_size * cfg.model.n_ctx
    return mean_loss * n_tokens / math.log(2) / n_bytes


def eval_batch(cfg: Config, tokens, i: int, rows=slice(None)) -> tuple[np.ndarray, np.ndarray]:
    """Evaluation batch i of a split (this process's `rows`): fixed windows, the same at every evaluation."""
    starts = data.window_starts(len(tokens), seed=cfg.train.seed, step=i, stream=data.EVAL_STREAM,
                                batch_size=cfg.train.micro_batch_size, n_ctx=cfg.model.n_ctx)[rows]
    return data.gather(tokens, starts, cfg.model.n_ctx)


def local_batch(cfg: Config, ds: data.Dataset, step: int, mesh) -> tuple[np.ndarray, np.ndarray]:
    """Step `step`'s batch as [grad_accum, micro_batch, n_ctx] host arrays, this process's rows only. In a batch
    or sequence warm-up, the first rows of that batch and the first tokens of each window (config.warmup)."""
    t = cfg.train
    rows, length = warmup.shape_at(cfg, step, sharding.n_batch_shards(mesh))
    starts = data.window_starts(len(ds.train), seed=t.seed, step=step, batch_size=t.batch_size, n_ctx=cfg.model.n_ctx)
    micro = rows // t.grad_accum
    starts = starts[:rows].reshape(t.grad_accum, micro)[:, sharding.process_rows(micro, mesh)]
    return data.gather(ds.train, starts, length)


def train_batch(cfg: Config, ds: data.Dataset, step: int, mesh):
    """Step `step`'s batch as [grad_accum, micro_batch, n_ctx] global arrays."""
    x, y = local_batch(cfg, ds, step, mesh)
    return sharding.put_batch(x, mesh), sharding.put_batch(y, mesh)


class Loop:
    """Steps from a state to cfg.train.steps: log, evaluate, checkpoint, and act on non-finite steps."""

    def __init__(self, cfg: Config, ds: data.Dataset, mesh, pieces: Pieces, ckpts: Checkpoints, tracker: Tracker,
                 stop: StopRequests | None = None):
        self.cfg, self.ds, self.mesh, self.pieces, self.ckpts, self.tracker = cfg, ds, mesh, pieces, ckpts, tracker
        self.stop = stop or StopRequests()
        self.pending: list[tuple[int, jax.Array]] = []  # (step, finite flag(s) on device) not read yet
        self.paced = Paced()  # the steps dispatched ahead, by their finite flags (never donated)
        self.rolled_back: set[int] = set()  # bad steps already retried once
        self.skipped = 0  # updates skipped since the last log line
        self.skipped_in_a_row = 0
        self.clock = Clock()
        self.shards = sharding.n_batch_shards(mesh)

    def run(self, state: TrainState, start: int):
        """Row k of metrics.jsonl describes the parameters after k updates and the update taken from them
        (docs/training.md, "metrics.jsonl"), so it is written once that update is done; row train.steps, the
        last, has no update after it. Checkpoint k is saved before update k, its row after it."""
        t, began = self.cfg.train, time.perf_counter()
        if start >= t.steps:
            self.tracker.message(f"{self.cfg.run.out_dir} is already trained to step {start} (train.steps={t.steps})")
            return {}
        step, self.saved = start, start  # self.saved: the checkpoint training stands on, never saved twice
        self.clock.restart()
        while True:
            is_eval = step % t.eval_every == 0 or step == t.steps
            stopping = self.stop.signum is not None  # read once: a signal may land mid-iteration
            is_save = step > self.saved and (is_eval or step % t.save_every == 0 or stopping)
            if is_save:
                state, back = self.check(state, step)  # every update before a checkpoint is checked
                if back is not None:  # rolled back: train those steps again
                    step = self.saved = back
                    self.clock.restart()
                    continue
            evals = self.eval_row(state, step) if is_eval else {}
            done = step == t.steps or (is_eval and self.reached_target(evals, step))
            if done:  # logged before the save: a kill between the two resumes before both
                last = self.log_final(state, step, evals)
            if is_save:
                self.save(state, step, evals)
                self.saved = step
            if stopping:
                self.interrupted(step)
            if done:
                self.finished(step, step - start, time.perf_counter() - began)
                return last
            if step == start:
                self.tracker.message("compiling the train step...")  # seconds to minutes, before the bar moves
            new_shape = self.warming_up(step, start)
            if new_shape and step != start:
                self.clock.settle(state)  # the steps before keep their place in the rate; the compile does not
            state, metrics = self.pieces.train_step(state, *self.batch(step))
            self.pending.append((step + 1, self.paced.add(metrics.pop("finite"))))  # named by the parameters it made
            self.clock.tick(state, first=step == start or new_shape, tokens=self.step_tokens(step))
            if step == start:
                self.tracker.compiled(step + 1)
            else:
                self.tracker.advance()
            if is_eval or step % t.log_every == 0:
                state, back = self.check(state, step + 1)
                if back is not None:
                    step = self.saved = back
                    self.clock.restart()
                    continue
                self.log(state, step, metrics, evals)
            step += 1

    # -- what depends on the runs one state holds (gptjax.train.seeds overrides these) --

    def batch(self, step: int):
        return train_batch(self.cfg, self.ds, step, self.mesh)

    def log(self, state: TrainState, step: int, metrics: dict, evals: dict) -> dict:
        """Row `step`: the update from step's parameters (metrics), and their evaluation if one was due."""
        row = {"step": step, **{k: float(v) for k, v in jax.device_get(metrics).items()},
               **self.clock.read(), **self.counted(step), **evals, **self.skips()}
        self.tracker.log(step, row)
        return row

    def log_final(self, state: TrainState, step: int, evals: dict) -> dict:
        """The last row: no update follows, so train_loss is batch `step`'s loss measured alone, and no lr."""
        row = {"step": step, "train_loss": self.batch_loss(state, step), **self.clock.read(),
               **self.counted(step), **evals, **self.skips()}
        self.tracker.log(step, row)
        return row

    def finished(self, step: int, trained: int, wall_s: float) -> None:
        self.tracker.finished(step, trained, wall_s, self.tokens_per_sec())

    def tokens_per_sec(self) -> float | None:
        """Each run's training speed over this session, compilation and evaluations left out."""
        c = self.clock
        return c.trained_tokens / c.trained_s if c.trained_s else None

    def step_tokens(self, step: int) -> int:
        """The tokens update `step` trains on, for one run."""
        rows, length = warmup.shape_at(self.cfg, step, self.shards)
        return rows * length

    def warming_up(self, step: int, start: int) -> bool:
        """Whether step `step` is a warm-up's first at a new shape (a new program to compile); it says which."""
        t, shape = self.cfg.train, warmup.shape_at(self.cfg, step, self.shards)
        if not (t.batch_warmup_steps or t.seq_warmup_steps) or (
                step != start and shape == warmup.shape_at(self.cfg, step - 1, self.shards)):
            return False
        self.tracker.message(f"step {step}: batches of {shape[0]} x {shape[1]} tokens (train.batch_warmup_steps="
                             f"{t.batch_warmup_steps}, train.seq_warmup_steps={t.seq_warmup_steps})")
        return True

    def skips(self) -> dict:
        """skipped_steps: the updates skipped (train.on_nonfinite=skip) since the last row, where there were any."""
        skipped, self.skipped = self.skipped, 0
        return {"skipped_steps": int(skipped)} if skipped else {}

    def rewind(self, step: int) -> None:
        """Drop the rows after `step`: they are measured again."""
        self.tracker.rewind(step)

    def counted(self, step: int) -> dict[str, int]:
        """The training compute behind the parameters at `step`: tokens and FLOPs (model.flops_per_token), a
        warm-up's smaller steps counted as they are."""
        return {"tokens": warmup.tokens_before(self.cfg, step, self.shards),
                "flops": warmup.flops_before(self.cfg, step, self.shards)}

    def save(self, state: TrainState, step: int, evals: dict) -> None:
        save(self.ckpts, self.cfg, state, step, evals)

    def newest_checkpoint(self) -> int | None:
        """The newest checkpoint's step, once every save in flight is written."""
        self.ckpts.manager.wait_until_finished()
        return self.ckpts.latest_step()

    def restart_from(self, step: int | None) -> TrainState:
        """The state at checkpoint `step` (None: a fresh start), with the rows from it on dropped."""
        self.rewind((step or 0) - 1)
        return restore_state(self.ckpts, step, self.pieces) if step else init_state(self.cfg, self.pieces)

    # ---------------------------------------------------------------------------

    def reached_target(self, last: dict | list[dict], step: int) -> bool:
        """train.target_val_loss: whether every run the state holds is at or below it (then it says so)."""
        target = self.cfg.train.target_val_loss
        rows = last if isinstance(last, list) else [last]
        if not target or not all(row.get("val_loss", float("inf")) <= target for row in rows):
            return False
        self.tracker.message(f"step {step}: val loss at or below train.target_val_loss={target:g}; stopping")
        return True

    def interrupted(self, step: int):
        newest = self.newest_checkpoint()
        where = (f"saved step {newest}; re-run the same command to resume from step {newest}" if newest
                 else "nothing was saved; re-run the same command to start again")
        raise Interrupted(where, self.stop.signum)

    def batch_loss(self, state: TrainState, step: int) -> float:
        """Batch `step`'s loss at these parameters without an update (nor dropout, as at evaluation)."""
        x, y = local_batch(self.cfg, self.ds, step, self.mesh)  # placed per micro-batch: multi-host safe
        put = functools.partial(sharding.put_batch, mesh=self.mesh)
        losses = [self.pieces.eval_step(state.params, put(xm), put(ym)) for xm, ym in zip(x, y)]
        return float(jnp.mean(jnp.stack(losses)))

    def eval_losses(self, state: TrainState) -> dict[str, float]:
        """eval_train_loss, val_loss, eval_train_bpb, val_bpb (`train_loss` is the step's own training loss), eval_s.

        The clock skips it, so tokens_per_sec counts training alone: at a large vocabulary
        an evaluation can take longer than the steps between two of them.
        """
        start = time.perf_counter()
        shown = self.tracker.evaluating if self.tracker.shows_progress else None  # else no wait per batch
        losses = evaluate(self.cfg, self.ds, self.mesh, self.pieces.eval_step, state.params, shown)
        self.tracker.evaluated()
        seconds = time.perf_counter() - start
        self.clock.skip(seconds)
        return {**{k.replace("train_", "eval_train_"): v for k, v in losses.items()}, "eval_s": seconds}

    def eval_row(self, state: TrainState, step: int) -> dict[str, float]:
        row = self.eval_losses(state)
        self.tracker.message(f"step {step}: train loss {row['eval_train_loss']:.4f}, val loss {row['val_loss']:.4f}")
        return row

    def check(self, state: TrainState, step: int) -> tuple[TrainState, int | None]:
        """Read the pending finite flags; on a bad step act as train.on_nonfinite says.

        Returns the state to go on with and, after a rollback, the step it is at. A step is bad
        when any run the state holds went non-finite at it.
        """
        if not self.pending:
            return state, None
        flags = np.asarray(jax.device_get([flag for _, flag in self.pending])).reshape(len(self.pending), -1)
        bad = [s for (s, _), ok in zip(self.pending, flags.all(axis=1)) if not ok]
        self.pending = []
        self.skipped_in_a_row = _in_a_row(flags.all(axis=1), self.skipped_in_a_row)
        if not bad:
            return state, None
        mode = self.cfg.train.on_nonfinite
        what = f"non-finite loss or gradients at step {bad[0]}" + (
            f" (and {len(bad) - 1} more steps up to {bad[-1]})" if len(bad) > 1 else "") + self.which(flags)
        if mode == "skip" and self.skipped_in_a_row > self.cfg.train.max_skips:
            newest = self.newest_checkpoint()
            kept = f"the newest checkpoint is step {newest}" if newest else "no checkpoint was saved"
            raise TrainingError(f"{self.skipped_in_a_row} updates in a row skipped up to step {bad[-1]} "
                                f"(train.max_skips={self.cfg.train.max_skips}); training stopped and {kept}; "
                                f"lower train.lr or raise train.warmup_steps")
        if mode == "skip":  # the jitted step already kept the old state for these steps
            self.skipped = self.skipped + (~flags).sum(axis=0).squeeze()
            plural = "s" if len(bad) > 1 else ""
            self.tracker.message(f"warning: {what}; update{plural} skipped (train.on_nonfinite=skip)")
            return state, None
        newest = self.newest_checkpoint()
        if mode == "rollback" and bad[0] not in self.rolled_back:
            self.rolled_back.add(bad[0])
            state = self.restart_from(newest)
            self.tracker.message(f"warning: {what}; rolling back to step {newest or 0} (train.on_nonfinite=rollback)")
            return state, newest or 0
        again = f" again after rolling back to step {newest or 0}" if mode == "rollback" else ""
        kept = f"the newest checkpoint is step {newest}, from before it" if newest else "no checkpoint was saved"
        raise TrainingError(f"{what}{again}; training stopped and {kept}; lower train.lr, raise "
                            f"train.warmup_steps, or set train.on_nonfinite=skip")

    def which(self, flags: np.ndarray) -> str:
        """Which of the state's runs went non-finite, for the message (one run: nothing to say)."""
        return ""


def _in_a_row(flags, before: int) -> int:
    """Non-finite steps at the end of `flags` (continuing `before` if all of them are)."""
    run = before
    for ok in flags:
        run = 0 if ok else run + 1
    return run
