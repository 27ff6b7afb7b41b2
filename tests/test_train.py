"""Training: overfitting, gradient accumulation, checkpoints, resume, metrics, wandb."""


import jax
import numpy as np

from gptjax.train import trainer
from gptjax.train.checkpoint import Checkpoints
from gptjax.train.tracking import read_metrics


def setup(cfg):
    cfg, ds, mesh = trainer.setup(cfg)
    pieces = trainer.build(cfg, mesh)
    return cfg, ds, mesh, pieces


def leaves_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_tiny_model_overfits_one_batch(tiny):
    cfg, ds, mesh, pieces = setup(tiny("train.lr=3e-3", "train.warmup_steps=0", "train.weight_decay=0",
                                       "train.batch_size=4", "model.n_embd=64", "train.steps=300"))
    state = trainer.init_state(cfg, pieces)
    x, y = trainer.train_batch(cfg, ds, 0, mesh)
    for _ in range(150):
        state, metrics = pieces.train_step(state, x, y)
    assert float(metrics["train_loss"]) < 0.1


def test_grad_accumulation_equals_one_big_batch(tiny):
    results = []
    for accum in (1, 4):
        cfg, ds, mesh, pieces = setup(tiny("train.batch_size=8", f"train.grad_accum={accum}"))
        state = trainer.init_state(cfg, pieces)
        for step in range(2):
            state, metrics = pieces.train_step(state, *trainer.train_batch(cfg, ds, step, mesh))
        results.append((state.params, float(metrics["train_loss"])))
    (p1, loss1), (p4, loss4) = results
    assert abs(loss1 - loss4) < 1e-5
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p4)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_checkpoint_round_trip_is_exact(tiny, tmp_path):
    cfg, ds, mesh, pieces = setup(tiny())
    state = trainer.init_state(cfg, pieces)
    for step in range(3):
        state, _ = pieces.train_step(state, *trainer.train_batch(cfg, ds, step, mesh))
    ckpts = Checkpoints(tmp_path / "ck")
    trainer.save(ckpts, cfg, state, 3, {"val_loss": 1.5})
    ckpts.close()
    restored = trainer.restore_state(Checkpoints(tmp_path / "ck"), 3, pieces)
    assert leaves_equal(restored, state)
    assert int(restored.step) == 3


def test_resume_continues_exactly_where_it_stopped(tiny, tmp_path):
    common = ["train.steps=20", "train.lr_decay_steps=20", "train.eval_every=5", "train.log_every=1"]
    whole = tiny(*common, f"run.out_dir={tmp_path / 'whole'}")
    trainer.train(whole)
    part = tiny(*common, f"run.out_dir={tmp_path / 'part'}")
    trainer.train(part.replace(train={"steps": 10}))
    assert Checkpoints(tmp_path / "part").latest_step() == 10
    _, _, _, pieces = setup(part)
    with Checkpoints(tmp_path / "part") as ckpts:  # from the newest (an older one would redo steps unseen)
        assert trainer.resume(ckpts, pieces)[1] == 10
    trainer.train(part)
    a, b = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "part")
    assert [m["step"] for m in b] == list(range(21))  # no step missing, none twice
    assert [m.get("train_loss") for m in a] == [m.get("train_loss") for m in b]
    cfg, _, _, pieces = setup(whole)
    final = [trainer.restore_state(Checkpoints(tmp_path / run), 20, pieces) for run in ("whole", "part")]
    assert leaves_equal(*final)


def test_run_directory_layout_and_metrics(tiny, tmp_path):
    last = trainer.train(tiny("run.wandb=offline"))
    run = tmp_path / "run"
    assert {"config.yaml", "tokenizer.json", "metrics.jsonl", "checkpoints"} <= {p.name for p in run.iterdir()}
    rows = read_metrics(run)
    assert rows[0]["step"] == 0 and abs(rows[0]["val_loss"] - np.log(65)) < 0.1
    for row in rows[1:-1]:
        assert {"step", "train_loss", "lr", "tokens_per_sec", "grad_norm"} <= row.keys()
    assert {"train_loss", "tokens_per_sec"} <= rows[-1].keys() and "lr" not in rows[-1]  # no update after it
    assert [r["step"] for r in rows if "val_loss" in r] == [0, 10, 20]
    assert last["step"] == 20 and last["val_loss"] < rows[0]["val_loss"]
    assert sorted(Checkpoints(run).steps()) == [10, 20]
    assert list((run / "wandb").glob("offline-run-*/run-*.wandb"))  # a real offline wandb run was written


def test_keeps_latest_and_best_checkpoints(tiny, tmp_path):
    cfg = tiny("train.steps=40", "train.eval_every=5", "run.keep_checkpoints=2")
    trainer.train(cfg)
    ckpts = Checkpoints(tmp_path / "run")
    rows = {r["step"]: r["val_loss"] for r in read_metrics(tmp_path / "run") if "val_loss" in r and r["step"]}
    best = min(rows, key=rows.get)
    assert set(ckpts.steps()) == {35, 40, best}
    assert ckpts.best_step() == best


def test_vocab_defaults_to_data_and_pads(tiny):
    cfg, *_ = setup(tiny())
    assert cfg.model.n_vocab == 65
    cfg, *_ = setup(tiny("model.n_vocab=128"))
    assert cfg.model.n_vocab == 128  # a smaller one is refused: tests/test_bad_input.py
