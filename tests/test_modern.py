"""The architecture and optimizer knobs: each keeps the model's properties and trains; GPT-2 tools refuse the rest."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gptjax.config import ConfigError, ModelConfig
from gptjax.interop import hf
from gptjax.interop.hf import ConvertError
from gptjax.model import GPT, count_params, init_cache
from gptjax.model.rope import rotate
from gptjax.train import optim, trainer
from gptjax.train.checkpoint import Checkpoints

BASE = dict(n_vocab=97, n_ctx=16, n_embd=32, n_head=4, n_layer=2)
KNOBS = {
    "rope": dict(positions="rope"),
    "rmsnorm": dict(norm="rmsnorm"),
    "swiglu": dict(mlp="swiglu"),
    "relu2": dict(mlp="relu2"),
    "qk_norm": dict(qk_norm=True),
    "gqa": dict(n_kv_head=2),
    "mqa": dict(n_kv_head=1),
    "untied": dict(tie_embeddings=False),
    "softcap": dict(logit_softcap=5.0),
    "zero_init_proj": dict(zero_init_proj=True),
    "unet_skips": dict(unet_skips=True),
    "embed_skips": dict(embed_skips=True),
    "value_embeds": dict(value_embeds=1, n_kv_head=2),
    "modern": dict(positions="rope", norm="rmsnorm", mlp="relu2", qk_norm=True, n_kv_head=2,
                   tie_embeddings=False, logit_softcap=15.0, bias=False),
}
knobs = pytest.mark.parametrize("knob", list(KNOBS))


def build(knob, **extra):
    cfg = ModelConfig(**BASE | KNOBS[knob] | extra)
    return cfg, GPT(cfg, rngs=nnx.Rngs(0))


@knobs
def test_parameter_count_equals_the_formula(knob):
    for bias in (True, False):
        cfg, model = build(knob, bias=bias)
        assert count_params(model) == cfg.n_params


@knobs
def test_flops_follow_the_architecture(knob):
    # 6N over the weights that multiply (every table but a tied W_E is only looked up, value tables too) + attention 12·L·T·D.
    cfg, model = build(knob)
    params = nnx.state(model, nnx.Param)
    looked_up = [params["wte_vd"]] if not cfg.tie_embeddings else []
    looked_up += [params["wpe_td"]] if cfg.positions == "learned" else []
    looked_up += [params["w_value_evhk"]] if cfg.value_embeds else []
    n = count_params(model) - sum(p[...].size for p in looked_up)
    assert cfg.flops_per_token() == 6 * n + 12 * cfg.n_layer * cfg.n_ctx * cfg.n_embd


@knobs
def test_causality_future_tokens_never_change_past_logits(knob):
    cfg, model = build(knob)
    x = jax.random.randint(jax.random.key(2), (2, cfg.n_ctx), 0, cfg.n_vocab)
    base = model(x)
    for t in (0, 7, cfg.n_ctx - 1):
        out = model(x.at[:, t:].set((x[:, t:] + 1) % cfg.n_vocab))
        np.testing.assert_allclose(out[:, :t], base[:, :t], atol=1e-6)
        assert not np.allclose(out[:, t], base[:, t])


@knobs
def test_kv_cache_logits_equal_full_recompute(knob):
    cfg, model = build(knob)
    x = jax.random.randint(jax.random.key(3), (2, cfg.n_ctx), 0, cfg.n_vocab)
    full = model(x)
    cache = init_cache(cfg, 2)
    assert cache[0]["k"].shape == (2, cfg.n_ctx, cfg.kv_heads, cfg.head_dim)  # sized by the K/V heads
    logits, cache = model.decode(x[:, :5], cache, 0)
    np.testing.assert_allclose(logits, full[:, :5], atol=1e-5)
    for pos in range(5, cfg.n_ctx):
        logits, cache = model.decode(x[:, pos:pos + 1], cache, pos)
        np.testing.assert_allclose(logits[:, 0], full[:, pos], atol=1e-5)


@knobs
def test_overfits_one_batch(knob, tiny):
    overrides = [f"model.{k}={v}" for k, v in KNOBS[knob].items()]
    cfg, ds, mesh = trainer.setup(tiny("train.lr=3e-3", "train.warmup_steps=0", "train.weight_decay=0",
                                       "train.batch_size=4", "model.n_embd=64", "train.steps=300", *overrides))
    pieces = trainer.build(cfg, mesh)
    state = trainer.init_state(cfg, pieces)
    x, y = trainer.train_batch(cfg, ds, 0, mesh)
    first = None
    for _ in range(100):
        state, metrics = pieces.train_step(state, x, y)
        first = first or float(metrics["train_loss"])
    assert float(metrics["train_loss"]) < 0.25 * first


def test_softcap_bounds_the_logits():
    cfg, model = build("softcap")
    logits = model(jnp.arange(32).reshape(2, 16) % cfg.n_vocab)
    assert float(jnp.abs(logits).max()) < cfg.logit_softcap


def test_rope_scores_depend_only_on_the_offset():
    q, k = jax.random.normal(jax.random.key(0), (2, 1, 1, 1, 16))
    def score(i, j):
        return float(jnp.sum(rotate(q, i) * rotate(k, j)))
    assert score(3, 1) == pytest.approx(score(12, 10), abs=1e-4)
    assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)
    assert score(0, 0) == pytest.approx(float(jnp.sum(q * k)), abs=1e-5)  # position 0: no rotation


def test_swiglu_is_about_as_big_as_gelu():
    gelu, swiglu = ModelConfig(**BASE), ModelConfig(**BASE, mlp="swiglu")
    assert math.isclose(swiglu.n_params, gelu.n_params, rel_tol=0.02)


@pytest.mark.parametrize("bad, says", [
    (dict(positions="alibi"), "model.positions must be learned or rope"),
    (dict(norm="batchnorm"), "model.norm must be layernorm or rmsnorm"),
    (dict(mlp="geglu"), "model.mlp must be gelu or relu2 or swiglu"),
    (dict(n_kv_head=3), "model.n_kv_head=3 must be positive and divide model.n_head=4"),
    (dict(n_kv_head=0), "model.n_kv_head=0 must be positive"),
    (dict(logit_softcap=-1.0), "model.logit_softcap must be a finite number >= 0"),
    (dict(positions="rope", n_embd=12, n_head=4), "head size n_embd/n_head must be even"),
])
def test_bad_knobs_say_what_to_fix(bad, says):
    with pytest.raises(ConfigError, match=says.replace("(", r"\(").replace(".", r"\.")):
        ModelConfig(**BASE | bad)


# Optimizers

def test_muon_orthogonalises_the_matrices_and_leaves_tables_and_gains_to_adamw():
    cfg = ModelConfig(**BASE | KNOBS["modern"])
    dims = optim.muon_dims(nnx.to_pure_dict(nnx.state(GPT(cfg, rngs=nnx.Rngs(0)), nnx.Param)))
    attn, mlp = dims["blocks"][0]["attn"], dims["blocks"][0]["mlp"]
    assert (attn["wq_dhk"].reduction_axis, attn["wq_dhk"].output_axis) == (0, (1, 2))  # D -> (H, K)
    assert (attn["wo_hkd"].reduction_axis, attn["wo_hkd"].output_axis) == ((0, 1), 2)  # (H, K) -> D
    assert (mlp["w_up_df"].reduction_axis, mlp["w_up_df"].output_axis) == (0, (1,))
    assert dims["wte_vd"] is None and dims["w_unembed_vd"] is None and dims["ln_f"]["scale_d"] is None
    assert attn["q_norm"]["scale_d"] is None


@pytest.mark.parametrize("name, lr", [("muon", 1e-3), ("lion", 3e-4)])  # Lion's sign steps want a smaller lr
def test_optimizer_trains_and_its_checkpoint_round_trips(name, lr, tiny, tmp_path):
    cfg, ds, mesh = trainer.setup(tiny(f"train.optimizer={name}", f"train.lr={lr}", "train.warmup_steps=0",
                                       "train.batch_size=4"))
    pieces = trainer.build(cfg, mesh)
    state = trainer.init_state(cfg, pieces)
    x, y = trainer.train_batch(cfg, ds, 0, mesh)
    losses = []
    for _ in range(30):
        state, metrics = pieces.train_step(state, x, y)
        losses.append(float(metrics["train_loss"]))
    assert losses[-1] < 0.9 * losses[0]  # AdamW at lr 1e-3 reaches 0.83 here
    ckpts = Checkpoints(tmp_path / "ck")
    trainer.save(ckpts, cfg, state, 30, {"val_loss": 1.0})
    ckpts.close()
    restored = trainer.restore_state(Checkpoints(tmp_path / "ck"), 30, pieces)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(a, b)


def test_bad_optimizer_says_what_to_fix(tiny):
    with pytest.raises(ConfigError, match="train.optimizer must be adamw, muon or lion, got 'sgd'"):
        tiny("train.optimizer=sgd")


def test_hf_export_refuses_a_model_gpt2_cannot_run(tmp_path):
    cfg = ModelConfig(**BASE | KNOBS["rope"])
    params = nnx.to_pure_dict(nnx.state(GPT(cfg, rngs=nnx.Rngs(0)), nnx.Param))
    with pytest.raises(ConvertError, match="not GPT-2's architecture"):
        hf.write(tmp_path / "out", cfg, params, None)
    assert not (tmp_path / "out").exists()
