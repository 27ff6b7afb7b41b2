"""The model: parameter count, initial loss, causality, KV cache exactness."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from gptjax import config
from gptjax.config import ModelConfig
from gptjax.model import GPT, blocked_causal_attention, count_params, init_cache, next_key, normal
from gptjax.model.layers import norm

SMALL = ModelConfig(n_vocab=97, n_ctx=16, n_embd=32, n_head=4, n_layer=2)


def test_gpt2_parameter_count_matches_formula_and_openai():
    cfg = config.load("gpt2").model
    abstract = nnx.eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(0)))
    assert count_params(abstract) == cfg.n_params == 124_439_808


def test_weights_draw_the_keys_nnx_would_and_advance_its_count():
    # next_key stands in for rngs.params() (a workaround for its tracing cost), so a seed
    # must keep giving the weights it gave before, traced or not.
    def three_keys(key, draw):
        stream = nnx.Rngs(params=key).params
        keys = jnp.stack([jax.random.key_data(draw(stream)) for _ in range(3)])
        return keys, stream.count[...]

    keys, count = three_keys(jax.random.key(7), lambda stream: stream())
    traced = jax.jit(three_keys, static_argnums=1)
    for ours in (three_keys(jax.random.key(7), next_key), traced(jax.random.key(7), next_key)):
        np.testing.assert_array_equal(ours[0], keys)
        assert int(ours[1]) == int(count) == 3


@pytest.mark.parametrize("shape", [(65, 32), (32, 4, 8), (7,)])
def test_weights_drawn_flat_are_the_numbers_of_a_shaped_draw(shape):
    @jax.jit
    def both(key):
        ours = normal(nnx.Rngs(params=key), shape, (None,) * len(shape), 0.02)[...]
        return ours, 0.02 * jax.random.normal(jax.random.fold_in(key, 0), shape, jnp.float32)

    ours, shaped = both(jax.random.key(5))
    np.testing.assert_array_equal(ours, shaped)


def test_flops_per_token_matches_a_hand_count():
    # gpt2: N = 124,439,808 - 1024·768 position weights = 123,653,376 (PaLM's MFU excludes embeddings
    # it looks up); attention 12·L·T·D = 12·12·1024·768 = 113,246,208.
    cfg = config.load("gpt2").model
    assert cfg.flops_per_token() == 6 * 123_653_376 + 113_246_208 == 855_166_464
    assert cfg.flops_per_token(causal_half=True) == 6 * 123_653_376 + 56_623_104


def test_parameter_count_without_bias_and_padded_vocab():
    for cfg in (SMALL, ModelConfig(n_vocab=128, n_ctx=8, n_embd=24, n_head=3, n_layer=3, bias=False)):
        assert count_params(GPT(cfg, rngs=nnx.Rngs(0))) == cfg.n_params


def test_initial_loss_is_about_ln_vocab():
    model = GPT(SMALL, rngs=nnx.Rngs(0))
    x = jax.random.randint(jax.random.PRNGKey(1), (8, SMALL.n_ctx), 0, SMALL.n_vocab)
    loss = optax.softmax_cross_entropy_with_integer_labels(model(x), jnp.roll(x, -1, axis=1)).mean()
    assert abs(float(loss) - math.log(SMALL.n_vocab)) < 0.05


def test_gpt2_init_scales_residual_projections():
    model = GPT(ModelConfig(n_vocab=64, n_ctx=8, n_embd=256, n_head=4, n_layer=8), rngs=nnx.Rngs(0))
    assert abs(float(model.blocks[0].mlp.w_up_df[...].std()) - 0.02) < 0.001
    assert abs(float(model.blocks[0].mlp.w_down_fd[...].std()) - 0.02 / math.sqrt(16)) < 0.0005
    assert abs(float(model.blocks[0].attn.wo_hkd[...].std()) - 0.02 / math.sqrt(16)) < 0.0005


def test_unembedding_is_tied_to_token_embedding():
    model = GPT(SMALL, rngs=nnx.Rngs(0))
    x = jnp.arange(SMALL.n_ctx)[None] % SMALL.n_vocab
    hidden, _ = model.hidden(x)
    np.testing.assert_allclose(model(x), hidden @ model.wte_vd[...].T, rtol=1e-5, atol=1e-5)


def test_causality_future_tokens_never_change_past_logits():
    model = GPT(SMALL, rngs=nnx.Rngs(0))
    x = jax.random.randint(jax.random.PRNGKey(2), (2, SMALL.n_ctx), 0, SMALL.n_vocab)
    base = model(x)
    for t in (0, 5, SMALL.n_ctx - 1):
        changed = x.at[:, t:].set((x[:, t:] + 1) % SMALL.n_vocab)
        out = model(changed)
        np.testing.assert_array_equal(out[:, :t], base[:, :t])
        assert not np.allclose(out[:, t], base[:, t])


@pytest.mark.parametrize("T", [1, 5, 64, 130])
def test_blocked_cpu_attention_equals_masked_attention_and_its_gradients(T):
    # The CPU path splits queries into blocks (130 gives 64 + 64 + 2) and never computes
    # the masked scores; values and gradients must be those of the plain masked softmax.
    q, k, v, g = (jax.random.normal(key, (2, T, 3, 8)) for key in jax.random.split(jax.random.key(0), 4))
    blocked, blocked_vjp = jax.vjp(blocked_causal_attention, q, k, v)
    plain, plain_vjp = jax.vjp(lambda *a: jax.nn.dot_product_attention(*a, is_causal=True), q, k, v)
    np.testing.assert_allclose(blocked, plain, atol=1e-5)
    for ours, theirs in zip(blocked_vjp(g), plain_vjp(g)):
        np.testing.assert_allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize("prompt_len", [1, 7, SMALL.n_ctx - 1])
def test_kv_cache_logits_equal_full_recompute_at_every_position(prompt_len):
    model = GPT(SMALL, rngs=nnx.Rngs(0))
    x = jax.random.randint(jax.random.PRNGKey(3), (2, SMALL.n_ctx), 0, SMALL.n_vocab)
    full = model(x)
    logits, cache = model.decode(x[:, :prompt_len], init_cache(SMALL, 2), 0)
    np.testing.assert_allclose(logits, full[:, :prompt_len], atol=1e-5)
    for pos in range(prompt_len, SMALL.n_ctx):
        logits, cache = model.decode(x[:, pos:pos + 1], cache, pos)
        np.testing.assert_allclose(logits[:, 0], full[:, pos], atol=1e-5)


def test_dropout_is_random_in_training_and_off_in_eval():
    cfg = ModelConfig(n_vocab=50, n_ctx=8, n_embd=16, n_head=2, n_layer=1, dropout=0.5)
    model = GPT(cfg, rngs=nnx.Rngs(0))
    x = jax.random.randint(jax.random.PRNGKey(0), (1, 8), 0, 50)
    a = model(x, rngs=nnx.Rngs(dropout=1))
    b = model(x, rngs=nnx.Rngs(dropout=2))
    assert not np.allclose(a, b)
    no_dropout = GPT(dataclasses.replace(cfg, dropout=0.0), rngs=nnx.Rngs(1))
    nnx.update(no_dropout, nnx.state(model, nnx.Param))
    np.testing.assert_array_equal(model(x), no_dropout(x))  # eval is the model without dropout, exactly


def test_norms_equal_their_formulas():
    """Planted bugs: LayerNorm without its mean, RMSNorm by a root sum square (gptjax/model/layers.py).
    Against the formulas in float64, with gains and a bias away from 1 and 0."""
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(2, 5, 32))
    gain, bias = np.linspace(0.5, 1.5, 32), np.linspace(-1, 1, 32)
    layer = norm(dataclasses.replace(SMALL, norm="layernorm"))
    layer.scale_d[...], layer.bias_d[...] = jnp.asarray(gain, jnp.float32), jnp.asarray(bias, jnp.float32)
    centred = x - x.mean(-1, keepdims=True)
    want = centred / np.sqrt((centred ** 2).mean(-1, keepdims=True) + 1e-5) * gain + bias
    np.testing.assert_allclose(layer(jnp.asarray(x, jnp.float32)), want, rtol=1e-4, atol=1e-4)
    rms = norm(dataclasses.replace(SMALL, norm="rmsnorm"))
    rms.scale_d[...] = jnp.asarray(gain, jnp.float32)
    want = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-5) * gain
    np.testing.assert_allclose(rms(jnp.asarray(x, jnp.float32)), want, rtol=1e-4, atol=1e-4)
