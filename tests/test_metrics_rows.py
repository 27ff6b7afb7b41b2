"""metrics.jsonl: row k is one measurement of the parameters after k updates (docs/training.md, "metrics.jsonl")."""

import pytest

from gptjax.train import optim, runs, trainer
from gptjax.train.checkpoint import Checkpoints
from gptjax.train.loop import Loop
from gptjax.train.tracking import read_metrics


def test_row_k_measures_the_parameters_after_k_updates_and_the_update_from_them(tiny, tmp_path):
    trainer.train(tiny("train.steps=6", "train.log_every=1", "train.eval_every=3", "train.warmup_steps=2",
                       "run.keep_checkpoints=3"))
    run = tmp_path / "run"
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == list(range(7))
    losses = [r["train_loss"] for r in rows]
    assert len(set(losses)) == len(losses)  # no two rows report one measurement
    cfg = runs.load_config(run)
    for row in rows[:-1]:  # the lr the update from the row's parameters used: warmup's 0 first
        assert row["lr"] == pytest.approx(float(optim.schedule(cfg.train)(row["step"])), abs=1e-9)
    assert rows[0]["lr"] == 0 and "lr" not in rows[-1] and "grad_norm" not in rows[-1]  # no update after the last
    # Restored at steps 3 and 6, the parameters give their rows' train_loss (batch k) and val_loss.
    cfg, ds, mesh = trainer.setup(cfg)
    pieces = trainer.build(cfg, mesh)
    loop = Loop(cfg, ds, mesh, pieces, None, None)
    for step in (3, 6):
        state = trainer.restore_state(Checkpoints(run, read_only=True), step, pieces)
        assert loop.batch_loss(state, step) == pytest.approx(rows[step]["train_loss"], rel=1e-5)
        evals = trainer.evaluate(cfg, ds, mesh, pieces.eval_step, state.params)
        assert evals["val_loss"] == pytest.approx(rows[step]["val_loss"], rel=1e-6)
        assert rows[step]["tokens"] == step * cfg.tokens_per_step
