"""The speedrun's schedule levers: batch-size and sequence-length warm-up (train.batch_warmup_steps,
train.seq_warmup_steps) and multi-token prediction (model.mtp_weight). Each is off by default, leaving the
parameter tree, batches, losses and counts as they were, and each computes what it says."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from gptjax import data
from gptjax.config import ConfigError, ModelConfig, TrainConfig, warmup
from gptjax.model import GPT, count_params
from gptjax.train import trainer
from gptjax.train.loop import local_batch
from gptjax.train.step import loss_fn, objective
from gptjax.train.tracking import read_metrics

from .conftest import run_in_process, run_script
from .test_train import leaves_equal, setup

BASE = dict(n_vocab=97, n_ctx=16, n_embd=32, n_head=4, n_layer=2)
IDX = (jnp.arange(64).reshape(4, 16) * 7) % 97
WARM = ["train.batch_warmup_steps=4", "train.seq_warmup_steps=2", "train.batch_size=8", "train.grad_accum=2"]


def params_of(model):
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


# Off by default

def test_levers_are_off_by_default_and_mtp_is_not_gpt2():
    assert TrainConfig().batch_warmup_steps == TrainConfig().seq_warmup_steps == 0
    assert ModelConfig().mtp_weight == 0 and ModelConfig().is_gpt2
    assert not ModelConfig(mtp_weight=0.3).is_gpt2  # so GPT-2 tools (HF export) refuse it


def test_batches_and_counts_are_unchanged_without_warmup(tiny):
    cfg, ds, mesh = trainer.setup(tiny("train.batch_size=8", "train.grad_accum=2"))
    t = cfg.train
    for step in range(3):  # the batch as the loop drew it before the levers existed
        starts = data.window_starts(len(ds.train), seed=t.seed, step=step, batch_size=8, n_ctx=cfg.model.n_ctx)
        x, y = data.gather(ds.train, starts.reshape(2, 4), cfg.model.n_ctx)
        x2, y2 = local_batch(cfg, ds, step, mesh)
        assert np.array_equal(x, x2) and np.array_equal(y, y2)
    assert warmup.segments(cfg) == [(0, None, 8, cfg.model.n_ctx)]
    per_token = cfg.model.flops_per_token()
    assert warmup.tokens_before(cfg, 7) == 7 * cfg.tokens_per_step
    assert warmup.flops_before(cfg, 7) == 7 * cfg.tokens_per_step * per_token


def test_training_objective_without_mtp_is_the_next_token_loss_bit_for_bit():
    cfg = ModelConfig(**BASE)
    graphdef, params = nnx.split(GPT(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    x, y = IDX[:, :-1], IDX[:, 1:]
    loss, grads = jax.jit(jax.value_and_grad(loss_fn), static_argnums=1)(params, graphdef, x, y)
    (total, parts), grads2 = jax.jit(jax.value_and_grad(objective, has_aux=True), static_argnums=1)(
        params, graphdef, x, y)
    assert list(parts) == ["train_loss"] and float(total) == float(loss) == float(parts["train_loss"])
    assert leaves_equal(grads, grads2)


def test_mtp_adds_one_map_and_draws_every_other_weight_the_same():
    plain, mtp = (params_of(GPT(ModelConfig(**BASE, mtp_weight=w), rngs=nnx.Rngs(0))) for w in (0.0, 0.5))
    assert set(mtp) - set(plain) == {"w_mtp_dd"} and mtp["w_mtp_dd"].shape == (32, 32)
    assert leaves_equal({k: v for k, v in mtp.items() if k != "w_mtp_dd"}, plain)


# What batch and sequence warm-up compute

def test_warmup_stages_are_a_quarter_a_half_then_all():
    cfg = TrainConfig(batch_size=16, batch_warmup_steps=6)
    assert [warmup.divisor(cfg.batch_warmup_steps, s) for s in range(8)] == [4, 4, 4, 2, 2, 2, 1, 1]
    assert [warmup.divisor(1, s) for s in range(2)] == [4, 1]  # a 1-step warm-up: one quarter step


def test_warmup_feeds_prefixes_of_the_full_batch_and_counts_its_tokens(tiny):
    cfg, ds, mesh = trainer.setup(tiny(*WARM))
    full, _, _ = trainer.setup(tiny("train.batch_size=8", "train.grad_accum=2"))
    T = cfg.model.n_ctx
    shapes = [local_batch(cfg, ds, s, mesh)[0].shape for s in range(5)]
    assert shapes == [(2, 1, T // 4), (2, 1, T // 2), (2, 2, T), (2, 2, T), (2, 4, T)]
    for step in range(5):
        x, y = local_batch(cfg, ds, step, mesh)
        fx, fy = local_batch(full, ds, step, mesh)
        rows, length = x.shape[0] * x.shape[1], x.shape[2]
        assert np.array_equal(x.reshape(rows, length), fx.reshape(8, T)[:rows, :length])
        assert np.array_equal(y.reshape(rows, length), fy.reshape(8, T)[:rows, :length])
    tokens = [2 * T // 4, 2 * T // 2, 4 * T, 4 * T]
    assert [warmup.tokens_before(cfg, s) for s in range(6)] == [0, *np.cumsum(tokens), sum(tokens) + 8 * T]
    flops = [n * cfg.model.flops_per_token(n_ctx=n // r) for n, r in zip(tokens, (2, 2, 4, 4))]
    assert warmup.flops_before(cfg, 4) == sum(flops)
    assert cfg.model.flops_per_token(n_ctx=T // 4) < cfg.model.flops_per_token()  # attention's 12·L·T·D


def test_a_warmup_run_says_its_shapes_counts_honestly_and_resumes_bit_exact_mid_warmup(tiny, tmp_path):
    common = [*WARM, "train.steps=6", "train.lr_decay_steps=6", "train.eval_every=3", "train.log_every=1"]
    result = run_in_process("train.py", "tiny", *common, f"run.out_dir={tmp_path / 'whole'}")
    assert result.returncode == 0, result.stderr
    for step, shape in ((0, "2 x 8"), (1, "2 x 16"), (2, "4 x 32"), (4, "8 x 32")):
        assert f"step {step}: batches of {shape} tokens" in result.stdout + result.stderr
    whole = read_metrics(tmp_path / "whole")
    cfg = trainer.setup(tiny(*common))[0]
    assert [r["tokens"] for r in whole] == [warmup.tokens_before(cfg, s) for s in range(7)]
    assert whole[3]["tokens"] == 2 * 8 + 2 * 16 + 4 * 32  # the tiny preset's n_ctx is 32
    assert [r["flops"] for r in whole] == [warmup.flops_before(cfg, s) for s in range(7)]
    # Stopped in the half-batch stage (checkpoint 3) and resumed: the same losses, counts and weights.
    part = tiny(*common, f"run.out_dir={tmp_path / 'part'}")
    trainer.train(part.replace(train={"steps": 3}))
    trainer.train(part)
    again = read_metrics(tmp_path / "part")
    assert [m["step"] for m in again] == list(range(7))
    assert [(m.get("train_loss"), m["tokens"]) for m in whole] == [(m.get("train_loss"), m["tokens"]) for m in again]
    _, _, _, pieces = setup(part)
    with trainer.Checkpoints(tmp_path / "whole") as w, trainer.Checkpoints(tmp_path / "part") as p:
        assert leaves_equal(trainer.restore_state(w, 6, pieces), trainer.restore_state(p, 6, pieces))


def test_warmup_rows_split_over_the_devices_and_budgets_count_the_smaller_steps(tiny):
    cfg = tiny("train.batch_size=6", "train.batch_warmup_steps=4").resolve_vocab(65)
    assert [s[2] for s in warmup.segments(cfg)] == [1, 3, 6]
    assert [s[2] for s in warmup.segments(cfg, shards=2)] == [2, 2, 6]  # rounded to split over 2 devices
    per_step = 6 * 32
    budget = tiny("train.batch_size=6", "train.batch_warmup_steps=4", "train.tokens_per_param=2").resolve_vocab(65)
    steps = budget.resolve_steps().train.steps
    tokens = 2 * budget.model.n_compute_params
    assert warmup.tokens_before(budget, steps) <= tokens < warmup.tokens_before(budget, steps + 1)
    assert steps > tokens // per_step  # the quarter and half steps bought more steps than full ones would
    flops = tiny("train.batch_size=6", "train.batch_warmup_steps=4", "train.seq_warmup_steps=4",
                 "train.flops_budget=1e10").resolve_vocab(65)
    steps = flops.resolve_steps().train.steps
    assert warmup.flops_before(flops, steps) <= 1e10 < warmup.flops_before(flops, steps + 1)


# What multi-token prediction computes

def test_mtp_loss_is_the_cross_entropy_of_token_t_plus_2_and_evaluation_stays_next_token():
    cfg = ModelConfig(**BASE, mtp_weight=0.5)
    model = GPT(cfg, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    x, y = IDX[:, :-1], IDX[:, 1:]
    total, parts = jax.jit(objective, static_argnums=1)(params, graphdef, x, y)
    h_btd = model.ln_f(model.stream(x)[0][-1])  # the final hidden state, normalised
    logits_btv = (h_btd[:, :-1] @ model.w_mtp_dd[...]) @ model.wte_vd[...].T  # W_MTP, then the shared W_Eᵀ
    direct = optax.softmax_cross_entropy_with_integer_labels(logits_btv, y[:, 1:]).mean()  # target of t: x[t+2]
    np.testing.assert_allclose(parts["mtp_loss"], direct, rtol=1e-5)
    next_token = jax.jit(loss_fn, static_argnums=1)(params, graphdef, x, y)
    assert float(parts["train_loss"]) == float(next_token)
    np.testing.assert_allclose(total, next_token + 0.5 * direct, rtol=1e-5)
    # Evaluation and sampling read the model's logits: those of the same weights without the head.
    plain = GPT(ModelConfig(**BASE), rngs=nnx.Rngs(0))
    assert np.array_equal(model(x), plain(x))
    grads = jax.jit(jax.grad(lambda p: objective(p, graphdef, x, y)[0]))(params)
    assert float(jnp.abs(grads["w_mtp_dd"][...]).sum()) > 0


def test_mtp_counts_its_map_and_second_unembedding():
    plain, mtp = ModelConfig(**BASE), ModelConfig(**BASE, mtp_weight=0.3)
    assert count_params(GPT(mtp, rngs=nnx.Rngs(0))) == mtp.n_params == plain.n_params + 32 * 32
    assert mtp.flops_per_token() - plain.flops_per_token() == 6 * (32 * 32 + 97 * 32)


def test_an_mtp_run_logs_both_losses(tiny, tmp_path):
    result = run_in_process("train.py", "tiny", "model.mtp_weight=0.3", "train.steps=4", "train.log_every=1",
                            "train.eval_every=4", f"run.out_dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr
    rows = read_metrics(tmp_path / "run")
    assert all(r["mtp_loss"] > 0 and r["train_loss"] > 0 for r in rows[:-1])
    assert "val_loss" in rows[-1] and "mtp_loss" not in rows[-1]  # the last row is measured as evaluation is


# Bad values

@pytest.mark.parametrize("key, value", [("train.batch_warmup_steps", "-1"), ("train.seq_warmup_steps", "-4"),
                                        ("model.mtp_weight", "-0.1"), ("model.mtp_weight", ".nan")])
def test_bad_values_are_one_error_line(key, value, tmp_path):
    result = run_in_process("train.py", "tiny", f"{key}={value}", f"run.out_dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and key in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_a_budget_is_refused_where_the_devices_round_the_warmup_batch(tmp_path):
    # Two CPU devices: a quarter of 6 rows (1) becomes 2, which the budget's step count did not price.
    result = run_script("train.py", "tiny", "train.batch_size=6", "train.batch_warmup_steps=4",
                        "train.tokens_per_param=2", f"run.out_dir={tmp_path / 'run'}", JAX_NUM_CPU_DEVICES="2")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: train.batch_warmup_steps: a quarter or half batch") and "multiple of 8" in \
        result.stderr
    assert not (tmp_path / "run").exists()


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="train.batch_warmup_steps must be >= 0"):
        TrainConfig(batch_warmup_steps=-2)
