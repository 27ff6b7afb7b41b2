"""CPU cores as devices: train.py splits a single run's batch over the cores where its step is big enough (and
the batch divides), keeps one device otherwise; a count the user set wins; split runs train as one device does."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from gptjax import api, config, sharding
from gptjax.train import trainer
from gptjax.train.tracking import read_metrics
from tests.conftest import ROOT, run_script

pytestmark = pytest.mark.slow  # every test here starts fresh processes: device counts are fixed at JAX start-up
CORES = len(os.sched_getaffinity(0))

MESH_SIZES = """
import json, jax
from gptjax import sharding
from gptjax.config import MeshConfig
print(json.dumps({"devices": jax.device_count(),
                  "default": [len(sharding.mesh_devices(MeshConfig(), rows)) for rows in (1, 2, 3, 4, 6, 12)],
                  "explicit": len(sharding.mesh_devices(MeshConfig(data=1, fsdp=-1), 1))}))
"""

# What train.py does before JAX starts (gptjax.cli), then the devices a run of 12 or 3 rows gets with a
# step above and below sharding.SPLIT_MIN_STEP_FLOPS.
DECISION = """
import json, os
from gptjax import sharding
sharding.split_cores()
import jax
from gptjax.config import MeshConfig
big, small = 2 * sharding.SPLIT_MIN_STEP_FLOPS, sharding.SPLIT_MIN_STEP_FLOPS / 2
print(json.dumps({"devices": jax.device_count(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
                  **{f"{rows} rows, {name}": len(sharding.mesh_devices(MeshConfig(), rows, flops))
                     for rows in (12, 3) for name, flops in (("big", big), ("small", small))},
                  "12 rows, big, most of it repeated": len(sharding.mesh_devices(MeshConfig(), 12, big, big / 2))}))
"""


def probe(script: str, **env: str) -> dict:
    env = {**{k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}, **env}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_one_device_unless_the_cores_are_split():
    assert probe(MESH_SIZES) == {"devices": 1, "default": [1] * 6, "explicit": 1}


def test_split_cores_follow_the_batch_and_forced_counts_keep_every_device():
    # The most of the 4 cores whose count divides the rows; an explicit mesh asks for all of them.
    assert probe(MESH_SIZES, JAX_NUM_CPU_DEVICES="4") == {"devices": 4, "default": [1, 2, 3, 4, 3, 4], "explicit": 4}
    forced = probe(MESH_SIZES, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    assert forced == {"devices": 4, "default": [4] * 6, "explicit": 4}  # must fit: make_mesh says so if not


def most_dividing(rows: int, cores: int) -> int:
    return max(n for n in range(1, cores + 1) if rows % n == 0)


@pytest.mark.skipif(CORES < 2, reason="splitting the cores needs two")
def test_train_splits_a_big_step_over_the_cores_and_keeps_a_small_one_on_one():
    got = probe(DECISION)
    assert got["devices"] == CORES
    assert (got["12 rows, big"], got["3 rows, big"]) == (most_dividing(12, CORES), most_dividing(3, CORES))
    assert (got["12 rows, small"], got["3 rows, small"]) == (1, 1)
    assert got["12 rows, big, most of it repeated"] == 1  # Muon's orthogonalisation runs whole on every core
    assert got["xla_flags"].split() == list(sharding.COLLECTIVE_FLAGS)  # a starved all-reduce waits


def test_the_users_count_and_flags_win():
    one = probe(DECISION, JAX_NUM_CPU_DEVICES="1")
    assert (one["devices"], one["12 rows, big"], one["xla_flags"]) == (1, 1, "")
    four = probe(DECISION, JAX_NUM_CPU_DEVICES="4")  # the user's split, whatever the step
    assert [four[k] for k in ("devices", "12 rows, big", "12 rows, small", "3 rows, big")] == [4, 4, 4, 3]
    forced = probe(DECISION, XLA_FLAGS="--xla_force_host_platform_device_count=3")
    assert (forced["devices"], forced["xla_flags"]) == (3, "--xla_force_host_platform_device_count=3")
    if CORES >= 2:  # the user's own timeout stays, and their other flags; only the missing one is added
        mine = "--xla_cpu_collective_call_terminate_timeout_seconds=7 --xla_cpu_enable_fast_math=false"
        flags = probe(DECISION, XLA_FLAGS=mine)["xla_flags"].split()
        assert flags == [*mine.split(), sharding.COLLECTIVE_FLAGS[1]]


def test_evaluation_batches_dispatched_far_ahead_do_not_deadlock_the_split_cores(tmp_path):
    """XLA:CPU deadlocked once a device had 32 programs in flight, and aborted the run after its rendezvous
    timeout (here 3 s): the CPU recipe's 100 evaluation batches, dispatched at once without a progress bar,
    did it at every try (gptjax.train.pacing)."""
    result = run_script("train.py", "shakespeare_char_cpu", "model.n_layer=1", "train.steps=1", "train.eval_every=1",
                        f"run.out_dir={tmp_path / 'run'}", "run.progress=false", JAX_NUM_CPU_DEVICES="2",
                        XLA_FLAGS="--xla_cpu_collective_call_terminate_timeout_seconds=3")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "done: step 1" in result.stdout


def test_train_runs_a_batch_the_split_cores_do_not_divide(tmp_path):
    result = run_script("train.py", "tiny", f"run.out_dir={tmp_path / 'run'}", "train.batch_size=3",
                        "train.steps=2", "train.eval_every=2", "train.eval_batches=1", JAX_NUM_CPU_DEVICES="2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "done: step 2" in result.stdout


# Batch 96 of the tiny model: a step of 5.8e8 FLOPs, over SPLIT_MIN_STEP_FLOPS, so train.py splits it by default.
# Dropout on: its keys must not depend on how the batch is split.
BIG = ["tiny", "train.batch_size=96", "model.dropout=0.1", "train.eval_every=4", "train.log_every=1",
       "train.lr_decay_steps=8", "train.warmup_steps=2"]
KEYS = ("train_loss", "grad_norm", "lr", "eval_train_loss", "val_loss")


def curves(run_dir) -> dict[int, dict]:
    return {row["step"]: {k: row[k] for k in KEYS if k in row} for row in read_metrics(run_dir)}


def assert_close(a, b) -> None:
    ca, cb = curves(a), curves(b)
    assert ca.keys() == cb.keys()
    for step in ca:
        assert ca[step].keys() == cb[step].keys(), step
        for key in ca[step]:
            assert ca[step][key] == pytest.approx(cb[step][key], rel=1e-5, abs=1e-5), (step, key)
    pa, pb = api.load_run(a).params, api.load_run(b).params
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(CORES < 2, reason="splitting the cores needs two")
def test_a_split_run_equals_the_one_device_run_and_resumes_across_device_counts(tmp_path):
    """Trained over the split cores by default (a fresh train.py), a run's losses and parameters equal the
    one-device run's within float tolerance (the all-reduce sums in another order); resumed on one device
    it goes on as that run, and a one-device run resumed over the split cores does too."""
    split, one, mixed = tmp_path / "split", tmp_path / "one", tmp_path / "one-then-split"
    done = run_script("train.py", *BIG, "train.steps=4", f"run.out_dir={split}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"training on {CORES if 96 % CORES == 0 else most_dividing(96, CORES)} CPU cores" in done.stdout
    for run in (one, mixed):  # this process's JAX has one device
        trainer.train(config.load(*BIG[:1], [*BIG[1:], "train.steps=4", f"run.out_dir={run}"]))
    assert_close(split, one)
    trainer.train(config.load(*BIG[:1], [*BIG[1:], "train.steps=8", f"run.out_dir={split}"]))  # now on one device
    trainer.train(config.load(*BIG[:1], [*BIG[1:], "train.steps=8", f"run.out_dir={one}"]))
    again = run_script("train.py", *BIG, "train.steps=8", f"run.out_dir={mixed}")  # now split
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming from step 4" in again.stdout
    assert_close(split, one)
    assert_close(mixed, one)


@pytest.mark.skipif(CORES != 2, reason="checks the rounding of a batch warm-up over exactly two cores")
def test_a_warm_up_the_split_would_round_keeps_one_device(tmp_path):
    """Batch 98 splits over 2 cores, but its warm-up's half batch of 49 would round to 48 there: a speed-up
    must not change what trains, so that run keeps one device (and says nothing of cores)."""
    args = ["tiny", "train.batch_size=98", "train.steps=1", "train.eval_every=1", "train.eval_batches=1"]
    plain = run_script("train.py", *args, f"run.out_dir={tmp_path / 'plain'}")
    warm = run_script("train.py", *args, "train.batch_warmup_steps=4", f"run.out_dir={tmp_path / 'warm'}")
    assert plain.returncode == warm.returncode == 0, plain.stderr[-1000:] + warm.stderr[-1000:]
    assert "training on 2 CPU cores" in plain.stdout and "CPU cores" not in warm.stdout
