"""Seeds in one program: the seeds of a run trained together, one jitted step vmapped over their states.

    gptjax train CONFIG --seeds N        (seed i: train.seed + i, in OUT_DIR/seed=i)
    gptjax sweep ... --seeds N           (each point's seeds, together)

Seed i trains exactly as it would alone, with its own initial parameters, dropout keys and data
order (each seed's batches are its own), and writes its own ordinary run directory: sample.py,
train.py and the sweep report read it as any other. The N states are stacked on a new leading
axis and one `jax.vmap`ped step updates them all. The seeds share one process, one compile and
one data load; whether the step itself gets cheaper per seed depends on how busy one small model
keeps the hardware (on a 2-core CPU it does not: BENCHMARKS.md, "Seeds together").

A stack trains from a common step: all new, or all resumed from the same checkpoint step (the
seeds save together, so an interrupted stack resumes as one). Seeds at different steps (one
trained alone, say) train one after another instead, as separate runs.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from gptjax import data, sharding
from gptjax.config import Config, ConfigError
from gptjax.train import resources, runs, trainer
from gptjax.train.loop import Loop, bits_per_byte, eval_batch, eval_bytes, local_batch
from gptjax.train.state import Pieces, build, init_state, restore_state, save
from gptjax.train.step import TrainState

SEED_DIR = "seed={}"
# Orbax's checkpoint writes are not safe from two threads at once: stacks side by side
# (train_stacks) take turns, each save written through before the other's starts.
CHECKPOINTING = threading.RLock()


def seed_configs(cfg: Config, n: int) -> list[Config]:
    """The n seeds of cfg: seed i trains with train.seed + i in run.out_dir/seed=i."""
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"--seeds must be a positive integer, got {n!r}")
    out = Path(cfg.run.out_dir)
    return [cfg.replace(train={"seed": cfg.train.seed + i}, run={"out_dir": str(out / SEED_DIR.format(i))})
            for i in range(n)]


def train(cfgs: list[Config]) -> list[dict]:
    """Train runs that differ only in train.seed and run.* together; returns each one's last logged row."""
    if len(cfgs) == 1:
        return [trainer.train(cfgs[0])]
    _check_seeds_only(cfgs)
    with contextlib.ExitStack() as closing:
        cfg, source = trainer.open_source(cfgs[0])
        cfg, ds, mesh = trainer.setup(cfg)
        # Every seed as setup resolved the first (n_vocab from the data, a fine-tune's model shape).
        cfgs = [cfg.replace(train={"seed": c.train.seed}, run=c.to_dict()["run"]) for c in cfgs]
        if source:
            source.check_tokenizer(ds.tokenizer)
        for c in cfgs:
            runs.check_run_dir(c, ds)
        resources.check_memory(cfg, mesh, copies=len(cfgs))
        single = build(cfg, mesh)
        opened = [trainer.open_run(c, ds, single, source, closing, progress=i == 0) for i, c in enumerate(cfgs)]
        starts = sorted({r.start for r in opened})
        if len(starts) == 1:
            placed = sharding.runs_meshes(mesh, len(cfgs), cfg.model.flops_per_token() * cfg.tokens_per_step)
            opened[0].tracker.message(placement(placed, cfgs))
            with trainer.stop_requests() as stop:
                return train_stacks(cfg, cfgs, ds, single, opened, placed, stop, starts[0])
        opened[0].tracker.message(f"the seeds' checkpoints are at different steps ({', '.join(map(str, starts))}): "
                                  f"training them one after another")
    return [trainer.train(c) for c in cfgs]


def train_stacks(cfg: Config, cfgs: list[Config], ds: data.Dataset, single: Pieces, opened: list[trainer.OpenRun],
                 placed: list[tuple], stop, start: int) -> list[dict]:
    """Train the runs from `start` in the stacks sharding.runs_meshes placed them in; each run's last row."""
    loops, first = [], 0
    for stack_mesh, n in placed:
        part = slice(first, first + n)
        first += n
        loops.append(Stack(cfgs[part], ds, stack_mesh, single, build(cfg, stack_mesh, stacked=n), opened[part], stop))
    go = lambda loop: loop.run(loop.stack([r.state for r in loop.opened]), start) or [{} for _ in loop.cfgs]
    if len(loops) == 1:
        return go(loops[0])
    # Stacks on different cores, side by side: JAX runs each device's programs on its own, so one
    # thread per stack keeps both busy. The runs never meet; the first error is raised once both stop.
    with concurrent.futures.ThreadPoolExecutor(len(loops)) as pool:
        results = [pool.submit(go, loop) for loop in loops]
    return [row for r in results for row in r.result()]


def placement(placed: list[tuple], cfgs: list[Config]) -> str:
    """How the seeds are placed, said once at the start: which seeds on which core, or on which devices."""
    names = [Path(c.run.out_dir).name for c in cfgs]
    first_mesh = placed[0][0]
    if placed[0][1] == len(cfgs) and first_mesh.shape[sharding.RUNS] == 1:
        devices = first_mesh.devices.ravel()
        where = (f"one {devices[0].platform.upper()} device" if len(devices) == 1
                 else f"{len(devices)} {devices[0].platform.upper()} devices")
        return f"training {len(cfgs)} seeds together in one vmapped step on {where}"
    cores, first = [], 0
    for stack_mesh, n in placed:
        per = n // stack_mesh.shape[sharding.RUNS]
        for device in stack_mesh.devices.ravel():
            cores.append(f"{', '.join(names[first:first + per])} on core {device.id}")
            first += per
    return f"training {len(cfgs)} seeds on {len(cores)} CPU cores: {'; '.join(cores)}"


def _check_seeds_only(cfgs: list[Config]) -> None:
    first = cfgs[0].to_dict()
    for c in cfgs[1:]:
        d = c.to_dict()
        for section in first:
            for key in first[section]:
                if section != "run" and (section, key) != ("train", "seed") and d[section][key] != first[section][key]:
                    raise ConfigError(f"runs trained together may differ only in train.seed and run.*, "
                                      f"not {section}.{key} ({first[section][key]!r} vs {d[section][key]!r})")


class Stack(Loop):
    """The loop over N runs' states stacked on a leading axis: rows, evaluations and checkpoints per run.

    A step is bad when any seed went non-finite at it; on_nonfinite=skip keeps only the bad seeds' old
    state (in the step), rollback takes every seed back to their common checkpoint, which replays the
    good seeds' steps exactly. tokens_per_sec is each seed's own rate (the stack trains N times as many).
    """

    def __init__(self, cfgs: list[Config], ds: data.Dataset, mesh, single: Pieces, stacked: Pieces,
                 opened: list[trainer.OpenRun], stop=None):
        super().__init__(cfgs[0], ds, mesh, stacked, opened[0].ckpts, opened[0].tracker, stop)
        self.cfgs, self.single, self.opened = cfgs, single, opened
        # States move between a run's own devices and the stack's by device_put, copies rather than
        # collectives: on cores split for runs the two are different devices.
        self.on_single = jax.tree.map(lambda s: sharding.NamedSharding(s.mesh, sharding.P(None, *s.spec)),
                                      single.state_shardings)
        self._stack = jax.jit(lambda states: jax.tree.map(lambda *a: jnp.stack(a), *states),
                              out_shardings=self.on_single)
        self._take = jax.jit(lambda state, i: jax.tree.map(lambda a: a[i], state),
                             out_shardings=single.state_shardings)

    def stack(self, states: list[TrainState]) -> TrainState:
        """The runs' states (each on its own devices) as one stacked state on the stack's."""
        return jax.device_put(self._stack(states), self.pieces.state_shardings)

    def unstack(self, state: TrainState) -> list[TrainState]:
        """Each run's state, back on its own devices."""
        moved = jax.device_put(state, self.on_single)
        return [self._take(moved, i) for i in range(len(self.cfgs))]

    def batches(self, make) -> tuple[jax.Array, jax.Array]:
        """Each seed's (x, y) from make(cfg), stacked and placed: [N, ..., rows, time]."""
        xs, ys = zip(*(make(c) for c in self.cfgs))
        return sharding.put_batch(np.stack(xs), self.mesh), sharding.put_batch(np.stack(ys), self.mesh)

    def batch(self, step: int):
        return self.batches(lambda c: local_batch(c, self.ds, step, self.mesh))

    def losses(self, params, n: int, make, shown: tuple[int, int] | None = None) -> np.ndarray:
        """Each seed's mean eval loss over n stacked batches make(cfg, i): [N]. With `shown` = (done before,
        total), each finished batch moves the bar, as in loop.evaluate."""
        per = []
        for i in range(n):
            per.append(self.pieces.eval_step(params, *self.batches(functools.partial(make, i=i))))
            if shown and i and self.tracker.shows_progress:  # else no wait per batch
                per[-2].block_until_ready()
                self.tracker.evaluating(shown[0] + i, shown[1])
        return np.asarray(jax.device_get(jnp.mean(jnp.stack(per), axis=0)))

    def log_final(self, state: TrainState, step: int, evals: list[dict]) -> list[dict]:
        batches = {c.train.seed: local_batch(c, self.ds, step, self.mesh) for c in self.cfgs}  # as Loop.batch_loss
        losses = self.losses(state.params, self.cfg.train.grad_accum,
                             lambda c, i: tuple(a[i] for a in batches[c.train.seed]))
        clock = self.clock.read() | self.counted(step)
        return self.write(step, [{"step": step, "train_loss": float(loss), **clock, **e, **skips}
                                 for loss, e, skips in zip(losses, evals, self.skips())])

    def eval_row(self, state: TrainState, step: int) -> list[dict]:
        """Each seed's evaluation on its own fixed batches, as Loop.eval_losses."""
        start, rows_here = time.perf_counter(), sharding.process_rows(self.cfg.train.micro_batch_size, self.mesh)
        n = self.cfg.train.eval_batches
        out = {split: self.losses(state.params, n, functools.partial(eval_batch, tokens=self.ds.split(split),
                                                                     rows=rows_here), shown=(k * n, 2 * n))
               for k, split in enumerate(("train", "val"))}
        self.tracker.evaluated()
        seconds = time.perf_counter() - start
        self.clock.skip(seconds)
        vals = " / ".join(f"{v:.4f}" for v in out["val"])
        self.tracker.message(f"step {step}: val loss {vals} (seeds {self.names()})")
        bpb = {split: [bits_per_byte(c, float(loss), eval_bytes(c, self.ds, split))
                       for c, loss in zip(self.cfgs, losses)] for split, losses in out.items()}
        return [{"eval_train_loss": float(tr), "val_loss": float(va), "eval_train_bpb": trb, "val_bpb": vab,
                 "eval_s": seconds} for tr, va, trb, vab in zip(out["train"], out["val"], bpb["train"], bpb["val"])]

    def log(self, state: TrainState, step: int, metrics: dict, evals: list[dict]) -> list[dict]:
        values, clock = jax.device_get(metrics), self.clock.read()
        evals, skips = evals or [{} for _ in self.cfgs], self.skips()
        clock |= self.counted(step)
        return self.write(step, [{"step": step, **{k: float(v[i]) for k, v in values.items()}, **clock, **evals[i],
                                  **skips[i]} for i in range(len(self.cfgs))])

    def skips(self) -> list[dict]:
        skipped, self.skipped = np.broadcast_to(self.skipped, len(self.cfgs)), 0
        return [{"skipped_steps": int(n)} if n else {} for n in skipped]

    def write(self, step: int, rows: list[dict]) -> list[dict]:
        for run, row in zip(self.opened, rows):
            run.tracker.log(step, row)
        return rows

    def finished(self, step: int, trained: int, wall_s: float) -> None:
        for run in self.opened:  # each seed's line, at its own speed (tokens_per_sec is per seed)
            run.tracker.finished(step, trained, wall_s, self.tokens_per_sec())

    def save(self, state: TrainState, step: int, evals: list[dict]) -> None:
        states = self.unstack(state)
        with CHECKPOINTING:  # another stack's saves may be in flight, from another thread
            for c, run, alone, row in zip(self.cfgs, self.opened, states, evals or [{} for _ in self.cfgs]):
                save(run.ckpts, c, alone, step, row)
                run.ckpts.manager.wait_until_finished()

    def newest_checkpoint(self) -> int | None:
        steps = []
        with CHECKPOINTING:
            for run in self.opened:
                run.ckpts.manager.wait_until_finished()
                steps.append(run.ckpts.latest_step())
        return None if None in steps else min(steps)

    def rewind(self, step: int) -> None:
        for run in self.opened:
            run.tracker.rewind(step)

    def restart_from(self, step: int | None) -> TrainState:
        self.rewind((step or 0) - 1)
        return self.stack([restore_state(run.ckpts, step, self.single) if step else init_state(c, self.single)
                           for c, run in zip(self.cfgs, self.opened)])

    def which(self, flags: np.ndarray) -> str:
        bad = [i for i in range(flags.shape[1]) if not flags[:, i].all()]
        return f" in seed {', '.join(Path(self.cfgs[i].run.out_dir).name for i in bad)}"

    def names(self) -> str:
        return ", ".join(str(c.train.seed) for c in self.cfgs)
