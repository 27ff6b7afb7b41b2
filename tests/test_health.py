"""Training health: a non-finite step is caught at the step it appears, and never reaches a checkpoint."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax import config
from gptjax.train import trainer
from gptjax.train.checkpoint import Checkpoints, digest
from gptjax.train.tracking import read_metrics

COMMON = ["train.lr_decay_steps=20", "train.eval_every=10", "train.checkpoint_every=3", "train.log_every=5"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A healthy run trained to step 6, checkpointed at 3 and 6."""
    run = tmp_path_factory.mktemp("health") / "base"
    trainer.train(config.load("tiny", [*COMMON, "train.steps=6", f"run.out_dir={run}"]))
    return run


def resume(base, tmp_path, *overrides):
    run = tmp_path / "run"
    shutil.copytree(base, run)
    return run, config.load("tiny", [*COMMON, f"run.out_dir={run}", *overrides])


def restore(run, step):
    ckpts = Checkpoints(run, read_only=True)
    try:
        return ckpts.restore(step, *_abstract(ckpts, step))
    finally:
        ckpts.close()


def _abstract(ckpts, step):
    cfg = config.from_dict(ckpts.meta(step)["config"])
    pieces = trainer.build(cfg, trainer.sharding.make_mesh(cfg.mesh))
    return pieces.abstract_state.params, pieces.abstract_state.opt_state


def test_inf_lr_is_caught_at_its_step_and_the_newest_checkpoint_stays_finite(base, tmp_path):
    # The flags are read only at step 9 (the next checkpoint), yet the message names step 7, where it began.
    run, cfg = resume(base, tmp_path, "train.lr=1e39", "train.steps=20")
    with pytest.raises(trainer.TrainingError, match=r"non-finite loss or gradients at step 7 \(and 2 more steps up "
                                                     r"to 9\); training stopped and the newest checkpoint is step 6"):
        trainer.train(cfg)
    ckpts = Checkpoints(run, read_only=True)
    assert ckpts.steps() == [3, 6]
    ckpts.close()
    params, opt_state, _ = restore(run, 6)
    assert bool(digest(params)[1]) and bool(digest(opt_state)[1])
    assert max(r["step"] for r in read_metrics(run)) == 5  # row 6 would describe the update that failed


def test_skip_keeps_the_state_of_the_last_good_step(base, tmp_path):
    run, cfg = resume(base, tmp_path, "train.lr=1e39", "train.steps=10", "train.on_nonfinite=skip",
                       "run.keep_checkpoints=5")
    trainer.train(cfg)
    before, after = restore(run, 6), restore(run, 10)
    for a, b in zip(jax.tree.leaves(before[:2]), jax.tree.leaves(after[:2]), strict=True):
        assert np.array_equal(a, b)
    rows = {r["step"]: r for r in read_metrics(run)}
    assert rows[10]["skipped_steps"] == 4 and rows[10]["train_loss"] is not None  # None would mean non-finite


def test_rollback_retries_once_then_stops(base, tmp_path):
    run, cfg = resume(base, tmp_path, "train.lr=1e39", "train.steps=10", "train.on_nonfinite=rollback")
    with pytest.raises(trainer.TrainingError, match="at step 7 .*again after rolling back"):
        trainer.train(cfg)
    assert max(r["step"] for r in read_metrics(run)) == 5


def test_rollback_from_a_transient_fault_ends_where_a_clean_run_does(base, tmp_path, monkeypatch):
    clean, clean_cfg = resume(base, tmp_path / "clean", "train.steps=10")
    trainer.train(clean_cfg)
    build, poisoned = trainer.build, []

    def build_with_one_bad_step(cfg, mesh):
        # A fault the hardware might make once: step 8's new parameters come out NaN, the first time only.
        pieces = build(cfg, mesh)
        step = pieces.train_step

        def flaky(state, x, y):
            state, metrics = step(state, x, y)
            if int(state.step) == 8 and not poisoned:
                poisoned.append(8)
                state.params = jax.tree.map(lambda p: p * jnp.nan, state.params)
                metrics["finite"] = jnp.bool_(False)
            return state, metrics
        pieces.train_step = flaky
        return pieces

    monkeypatch.setattr(trainer, "build", build_with_one_bad_step)
    run, cfg = resume(base, tmp_path / "flaky", "train.steps=10", "train.on_nonfinite=rollback")
    trainer.train(cfg)
    assert poisoned == [8]
    assert [r["step"] for r in read_metrics(run)] == [r["step"] for r in read_metrics(clean)]
    for a, b in zip(jax.tree.leaves(restore(run, 10)[:2]), jax.tree.leaves(restore(clean, 10)[:2]), strict=True):
        assert np.array_equal(a, b)


def test_grad_norm_and_update_ratio_are_logged(base):
    # Row 0's update has warmup's lr of 0; the last row has no update after it.
    rows = [r for r in read_metrics(base) if r["step"] > 0 and "lr" in r]
    assert rows and all(r["grad_norm"] > 0 and 0 < r["update_ratio"] < 1 for r in rows)
