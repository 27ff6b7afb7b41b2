"""Crash safety: a real training process killed with SIGKILL, mid-step or mid-save, resumes bit for bit."""

import functools
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from gptjax import config
from gptjax.train import trainer
from gptjax.train.checkpoint import Checkpoints
from gptjax.train.tracking import read_metrics
from tests.conftest import ROOT

STEPS = 20
ARGS = ["tiny", f"train.steps={STEPS}", f"train.lr_decay_steps={STEPS}", "train.eval_every=8",
        "train.checkpoint_every=2", "train.log_every=1", "model.dropout=0.1"]  # dropout: the RNG matters too


def train(run: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *ARGS, f"run.out_dir={run}"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def last_logged(run: Path) -> int:
    rows = read_metrics(run)
    return rows[-1]["step"] if rows else -1


def saving(run: Path) -> bool:
    return any((run / "checkpoints").glob("*.orbax-checkpoint-tmp*"))


def kill_when(proc: subprocess.Popen, ready, timeout: float = 120) -> bool:
    """SIGKILL the process the moment ready() holds; False if it exited first. Never leaves it running."""
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if ready():
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.002)
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """An uninterrupted run to STEPS, and the same run killed three times on the way there and re-run."""
    tmp = tmp_path_factory.mktemp("crash")
    # Fixed kill points by default, so a failure repeats; GPTJAX_KILL_SEED=N explores others.
    seed = int(os.environ.get("GPTJAX_KILL_SEED", 0))
    rng, why = random.Random(seed), f"(GPTJAX_KILL_SEED={seed} repeats these kill points)"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # conftest shares compiled steps between the processes
    whole, part = tmp / "whole", tmp / "part"
    trainer.train(config.load(ARGS[0], [*ARGS[1:], f"run.out_dir={whole}"]))  # the reference needs no process

    # First kill: as soon as a checkpoint is half written (its temporary folder on disk).
    first = rng.randrange(2, 8)
    assert kill_when(train(part, env), lambda: last_logged(part) >= first and saving(part)), why
    assert saving(part), f"the kill should have interrupted a save {why}"
    # Then kills at random steps, each after the resumed run has moved on.
    for _ in range(2):
        target = last_logged(part) + rng.randrange(1, 3)
        reached = functools.partial(lambda t: last_logged(part) >= t, target)
        assert kill_when(train(part, env), reached), f"run ended before step {target} {why}"
    proc = train(part, env)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    return whole, part, why


def final_state(run: Path, step: int = STEPS):
    cfg, _, mesh = trainer.setup(config.load(ARGS[0], ARGS[1:]))
    ckpts = Checkpoints(run, read_only=True)
    try:
        return trainer.restore_state(ckpts, step, trainer.build(cfg, mesh))
    finally:
        ckpts.close()


def same(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


@pytest.mark.slow  # train.py processes, killed mid-run
def test_killed_run_logs_every_step_once_with_the_same_losses(killed):
    whole, part, why = killed
    assert not saving(part)  # the interrupted save was cleaned up, never picked up
    a, b = read_metrics(whole), read_metrics(part)
    assert [r["step"] for r in b] == list(range(STEPS + 1)), why  # no step missing, none twice
    assert [r.get("train_loss") for r in a] == [r.get("train_loss") for r in b], why


@pytest.mark.slow  # train.py processes, killed mid-run
def test_killed_run_ends_with_the_same_bits(killed):
    whole, part, why = killed
    assert same(final_state(whole), final_state(part)), why


@pytest.mark.slow  # train.py processes, killed mid-run
def test_damaged_newest_checkpoint_falls_back_to_the_one_before(killed, capsys, tmp_path):
    original, part, _ = killed
    whole = tmp_path / "whole"  # a copy: the module's runs stay as the other tests expect, in any order
    shutil.copytree(original, whole)
    params = max((whole / "checkpoints" / str(STEPS) / "params").rglob("d/*"), key=lambda p: p.stat().st_size)
    data = bytearray(params.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: only the checksum can tell
    params.write_bytes(bytes(data))
    trainer.train(config.load(ARGS[0], [*ARGS[1:], f"run.out_dir={whole}"]))
    err = capsys.readouterr().err
    assert re.search(f"checkpoints/{STEPS} (is damaged|cannot be restored).*resuming from step {STEPS - 2} instead", err)
    assert (whole / "checkpoints-damaged" / str(STEPS)).is_dir()
    assert same(final_state(whole), final_state(part))


def test_a_metrics_line_cut_short_by_a_kill_is_dropped_on_resume(tiny, tmp_path):
    from gptjax.train.tracking import Tracker

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(f'{{"step": {i}, "train_loss": 1.0}}\n' for i in range(4))
                                       + '{"step": 4, "train_lo')
    Tracker(run, tiny(), start_step=2, total_steps=10).close()
    assert [r["step"] for r in read_metrics(run)] == [0, 1]  # row 2 is written again, after step 2's update
