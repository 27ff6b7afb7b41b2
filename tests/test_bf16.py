"""bfloat16 compute, run on the CPU: `compute_dtype=auto` picks it on every GPU and TPU (the KV cache
follows), so the model, a train step and the sampler are exercised in it here, against float32."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from gptjax import sampling
from gptjax.config import ModelConfig
from gptjax.model import GPT, init_cache
from gptjax.train import trainer

F32 = ModelConfig(n_vocab=97, n_ctx=16, n_embd=32, n_head=4, n_layer=2)
BF16 = dataclasses.replace(F32, compute_dtype="bfloat16")


def models():
    """The same weights (float32 parameters either way) computing in float32 and in bfloat16."""
    f32 = GPT(F32, rngs=nnx.Rngs(0))
    bf16 = GPT(BF16, rngs=nnx.Rngs(0))
    nnx.update(bf16, nnx.state(f32, nnx.Param))
    return f32, bf16


def test_bfloat16_model_computes_in_bfloat16_and_its_loss_is_within_1e_3_of_float32():
    """Planted bug: compute_dtype ignored, or bfloat16 leaking into the parameters or the logits' softmax."""
    f32, bf16 = models()
    assert bf16.dtype == jnp.bfloat16
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(bf16, nnx.Param)))
    x = jax.random.randint(jax.random.PRNGKey(1), (4, F32.n_ctx), 0, F32.n_vocab)
    hidden, _ = bf16.hidden(x)
    assert hidden.dtype == jnp.bfloat16
    logits16, logits32 = bf16(x), f32(x)
    assert logits16.dtype == jnp.float32  # the unembedding accumulates in float32 for a stable softmax
    assert not np.array_equal(logits16, logits32)  # it really ran in a coarser type
    y = jnp.roll(x, -1, axis=1)
    loss16, loss32 = (float(optax.softmax_cross_entropy_with_integer_labels(lg, y).mean())
                      for lg in (logits16, logits32))
    assert abs(loss16 - loss32) < 1e-3, (loss16, loss32)  # 1.7e-5 measured


def test_bfloat16_kv_cache_logits_are_within_5e_3_of_recompute():
    """Planted bug: the cache written or read in the wrong dtype or position under bfloat16 (9.2e-4 measured)."""
    _, model = models()
    x = jax.random.randint(jax.random.PRNGKey(3), (2, F32.n_ctx), 0, F32.n_vocab)
    full = model(x)
    cache = init_cache(BF16, 2, model.dtype)
    logits, cache = model.decode(x[:, :5], cache, 0)
    assert cache[0]["k"].dtype == jnp.bfloat16
    np.testing.assert_allclose(logits, full[:, :5], atol=5e-3)
    for pos in range(5, F32.n_ctx):
        logits, cache = model.decode(x[:, pos:pos + 1], cache, pos)
        np.testing.assert_allclose(logits[:, 0], full[:, pos], atol=5e-3)


def test_bfloat16_training_follows_float32_within_2e_2(tiny):
    """Ten real train steps in each compute dtype from the same weights and batches: the losses agree
    within 0.02 (a bfloat16 step that diverged or never updated would not) and parameters stay float32."""
    losses = {}
    for dtype in ("float32", "bfloat16"):
        cfg, ds, mesh = trainer.setup(tiny(f"model.compute_dtype={dtype}", "train.warmup_steps=0"))
        pieces = trainer.build(cfg, mesh)
        state = trainer.init_state(cfg, pieces)
        losses[dtype] = []
        for step in range(10):
            state, metrics = pieces.train_step(state, *trainer.train_batch(cfg, ds, step, mesh))
            losses[dtype].append(float(metrics["train_loss"]))
        assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(state.params))
    assert losses["float32"][-1] < losses["float32"][0] - 0.3  # the steps really trained
    np.testing.assert_allclose(losses["bfloat16"], losses["float32"], atol=2e-2)


def test_bfloat16_sampler_draws_greedy_tokens_of_the_bfloat16_model_with_and_without_cache():
    _, model = models()
    graphdef, params = nnx.split(model, nnx.Param)
    prompt = [3, 1, 4, 1, 5]
    cached, recomputed = (sampling.generate(graphdef, params, BF16, prompt, max_new_tokens=20, temperature=0.0,
                                            use_cache=use_cache)[0] for use_cache in (True, False))
    assert cached == recomputed and len(cached) == 20  # 20 tokens cross the 16-token window
    drawn = sampling.generate(graphdef, params, BF16, prompt, max_new_tokens=20, num_samples=3, temperature=1.0,
                              top_k=10, seed=1)
    assert all(len(row) == 20 and all(0 <= t < F32.n_vocab for t in row) for row in drawn)
