"""Seeds in one program: each seed of a vmapped stack trains as its own separate run would."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from gptjax import api, config
from gptjax.train import seeds, trainer
from gptjax.train.loop import TrainingError
from gptjax.train.tracking import read_metrics

from .conftest import ROOT, run_script

# Dropout on, so each seed's own dropout keys count; grad_accum 2, so each seed's micro-batches do.
# Batch 96: a step of 5.8e8 FLOPs, over sharding.SPLIT_MIN_STEP_FLOPS, so split cores do take a seed each.
COMMON = ["model.dropout=0.1", "train.grad_accum=2", "train.batch_size=96", "train.eval_every=4",
          "train.log_every=2", "train.lr_decay_steps=8", "train.warmup_steps=2"]
CURVES = ("train_loss", "grad_norm", "lr", "eval_train_loss", "val_loss")


def curves(run_dir) -> dict[int, dict]:
    return {row["step"]: {k: row[k] for k in CURVES if k in row} for row in read_metrics(run_dir)}


@pytest.fixture(scope="module")
def separate(tmp_path_factory):
    """Seeds 5 and 6 trained one by one, as ordinary runs, to step 8."""
    out = tmp_path_factory.mktemp("separate")
    for seed in (5, 6):
        trainer.train(config.load("tiny", [*COMMON, "train.steps=8", f"train.seed={seed}", f"run.out_dir={out / str(seed)}"]))
    return out


def assert_same(stacked: dict, alone: dict, what) -> None:
    assert stacked.keys() == alone.keys(), what
    for step in alone:
        assert stacked[step].keys() == alone[step].keys(), (what, step)
        for key, value in alone[step].items():
            assert stacked[step][key] == pytest.approx(value, abs=1e-5, rel=1e-5), (what, step, key)


def test_stacked_seeds_equal_separate_runs_through_a_resume(separate, tmp_path, capsys):
    """Trained together to step 4, then resumed together to step 8: every logged number of each seed
    equals its separate run's to 1e-5, and so do its final parameters."""
    base = config.load("tiny", [*COMMON, "train.seed=5", f"run.out_dir={tmp_path}"])
    cfgs = seeds.seed_configs(base.replace(train={"steps": 4}), 2)
    assert [c.train.seed for c in cfgs] == [5, 6]
    seeds.train(cfgs)
    # Where the seeds train is said in every case, here where the cores are not split (JAX started unsplit).
    assert "training 2 seeds together in one vmapped step on one CPU device\n" in capsys.readouterr().out
    assert all(max(curves(c.run.out_dir)) == 4 for c in cfgs)
    last = seeds.train(seeds.seed_configs(base.replace(train={"steps": 8}), 2))
    assert [row["step"] for row in last] == [8, 8]
    for i, seed in enumerate((5, 6)):
        alone = curves(separate / str(seed))
        assert alone.keys() == {0, 2, 4, 6, 8}
        assert_same(curves(tmp_path / f"seed={i}"), alone, seed)
        mine, theirs = api.load_run(tmp_path / f"seed={i}").params, api.load_run(separate / str(seed)).params
        for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(theirs)):
            np.testing.assert_allclose(a, b, atol=1e-5)
    # The seeds really differ: a stack that trained one seed N times would pass the rest of this test for seed 5.
    assert curves(tmp_path / "seed=0")[8]["val_loss"] != curves(tmp_path / "seed=1")[8]["val_loss"]


def test_seeds_from_the_command_line_write_ordinary_runs(separate, tmp_path):
    """`train.py --seeds 2` writes OUT/seed=0 and OUT/seed=1, ordinary runs sample.py reads. A seed already
    at another step (here: a separate run's copy, trained to the end) makes the seeds train one by one."""
    shutil.copytree(separate / "5", tmp_path / "seed=0")
    done = run_script("train.py", "tiny", *COMMON, "train.steps=8", "train.seed=5", f"run.out_dir={tmp_path}",
                      "--seeds", "2")
    assert done.returncode == 0, done.stderr
    assert "at different steps (0, 8): training them one after another" in done.stdout + done.stderr
    assert f"{tmp_path / 'seed=0'} is already trained to step 8" in done.stdout
    assert [line.split("run dir ")[1] for line in done.stdout.splitlines() if line.startswith("done:")] == [
        str(tmp_path / "seed=1")]
    assert_same(curves(tmp_path / "seed=1"), curves(separate / "6"), "seed=1")
    run = api.load_run(tmp_path / "seed=1")
    assert run.step == 8 and run.cfg.train.seed == 6 and api.sample(run, max_new_tokens=5)[0]
    bad = run_script("train.py", "tiny", f"run.out_dir={tmp_path / 'none'}", "--seeds", "0")
    assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1] == (
        "error: --seeds must be a positive integer, got 0")
    assert not (tmp_path / "none").exists()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="the seeds spread over CPU cores: needs two")
def test_seeds_spread_over_the_cpu_cores_train_as_their_separate_runs(separate, tmp_path):
    """`train.py --seeds 2` in a fresh process makes each CPU core a device and gives each core one seed:
    every logged number still equals the seed's separate run (one device) to 1e-5, and a single run in
    the same kind of process keeps one device (the split serves stacks, which need no all-reduce)."""
    done = run_script("train.py", "tiny", *COMMON, "train.steps=8", "train.seed=5", f"run.out_dir={tmp_path}",
                      "--seeds", "2")
    assert done.returncode == 0, done.stderr
    assert "training 2 seeds on 2 CPU cores: seed=0 on core 0; seed=1 on core 1" in done.stdout
    for i, seed in enumerate((5, 6)):
        assert_same(curves(tmp_path / f"seed={i}"), curves(separate / str(seed)), seed)
    out = subprocess.run([sys.executable, "-c", SPLIT_PROBE], capture_output=True, text=True, cwd=ROOT,
                         env={k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"})
    assert out.returncode == 0, out.stderr[-2000:]
    cores = len(os.sched_getaffinity(0))
    probe = json.loads(out.stdout)
    assert (probe["devices"], probe["single_run"], probe["4 seeds"]) == (cores, 1, [[min(cores, 4), 4]])
    assert probe["4 small seeds"] == [[1, 4]]  # a step under SPLIT_MIN_STEP_FLOPS keeps its stack on one core
    if cores == 2:  # 3 seeds: two on one core, one on the other, side by side
        assert probe["3 seeds"] == [[1, 2], [1, 1]]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) != 2, reason="checks the split of 3 seeds over exactly two cores")
def test_three_seeds_on_two_cores_split_two_and_one_and_train_as_their_separate_runs(separate, tmp_path):
    """3 seeds on 2 cores once all trained on one core, at the pace of 3: now 2 train on one core and 1 on
    the other, side by side, and the placement is said. Each seed still equals its separate run."""
    done = run_script("train.py", "tiny", *COMMON, "train.steps=8", "train.seed=5", f"run.out_dir={tmp_path}",
                      "--seeds", "3")
    assert done.returncode == 0, done.stderr
    assert "training 3 seeds on 2 CPU cores: seed=0, seed=1 on core 0; seed=2 on core 1\n" in done.stdout
    trainer.train(config.load("tiny", [*COMMON, "train.steps=8", "train.seed=7", f"run.out_dir={tmp_path / '7'}"]))
    for i, alone in enumerate((separate / "5", separate / "6", tmp_path / "7")):
        assert_same(curves(tmp_path / f"seed={i}"), curves(alone), i)
    assert sorted(line.split("run dir ")[1] for line in done.stdout.splitlines() if line.startswith("done:")) == [
        str(tmp_path / f"seed={i}") for i in range(3)]


SPLIT_PROBE = """
import json
from gptjax import sharding
sharding.split_cores_for_runs()
import jax
from gptjax.config import MeshConfig
mesh = sharding.make_mesh(MeshConfig(), sharding.mesh_devices(MeshConfig(), 12))
print(json.dumps({"devices": jax.device_count(), "single_run": mesh.size,
                  **{f"{n} seeds": [[m.shape["runs"], k] for m, k in sharding.runs_meshes(mesh, n)] for n in (4, 3)},
                  "4 small seeds": [[m.shape["runs"], k] for m, k in sharding.runs_meshes(mesh, 4, step_flops=1e8)]}))
"""


def test_a_non_finite_stack_names_its_seeds_and_stops_as_one_run_would(tmp_path):
    base = config.load("tiny", ["train.lr=1e39", "train.steps=4", "train.log_every=2", "train.eval_every=4",
                                f"run.out_dir={tmp_path}"])
    # Row 0 is written once its update (the one that made step 1's parameters) is checked: it is not.
    with pytest.raises(TrainingError, match=r"non-finite loss or gradients at step 1 "
                                            r"in seed seed=0, seed=1; training stopped and no checkpoint was saved"):
        seeds.train(seeds.seed_configs(base, 2))
    assert [curves(tmp_path / f"seed={i}") for i in range(2)] == [{}, {}]
