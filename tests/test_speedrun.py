"""The speedrun's levers (modded-nanogpt's): each off by default, leaving GPT-2 as it was, and each computing
what it says; and train.target_val_loss, which stops a run at its first evaluation at or below it."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from gptjax.config import Config, ConfigError, ModelConfig, TrainConfig
from gptjax.model import GPT
from gptjax.train import optim

from .conftest import run_in_process

BASE = dict(n_vocab=97, n_ctx=16, n_embd=32, n_head=4, n_layer=2)
IDX = (jnp.arange(32).reshape(2, 16) * 7) % 97

# The GPT-2 model at BASE as the code built it before these knobs existed (the commit before the speedrun's levers).
GPT2_LEAVES = 36
GPT2_ABS_SUM = 527.6422829627991
GPT2_LOGITS = (25.810197830200195, 292.47210693359375,
               [-0.01310795545578003, 0.30200570821762085, 0.09952685236930847, 0.002702482044696808])

MODEL_KNOBS = {"zero_init_proj": True, "unet_skips": True, "embed_skips": True, "value_embeds": 1}
TRAIN_KNOBS = {"cooldown_frac": 0.4, "head_lr": 1e-2, "target_val_loss": 1.5}


def params_of(model):
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def flat(params):
    return {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)}


# Off by default: GPT-2's parameter tree and logits as before

def test_gpt2_parameter_tree_and_logits_are_unchanged_at_the_defaults():
    model = GPT(ModelConfig(**BASE), rngs=nnx.Rngs(0))
    leaves = flat(params_of(model))
    assert len(leaves) == GPT2_LEAVES and not any("skip" in k or "value" in k or "ve_mix" in k for k in leaves)
    assert sum(float(jnp.abs(v).sum()) for v in leaves.values()) == pytest.approx(GPT2_ABS_SUM, rel=1e-6)
    logits = model(IDX)
    assert float(logits.sum()) == pytest.approx(GPT2_LOGITS[0], rel=1e-4)
    assert float(jnp.abs(logits).sum()) == pytest.approx(GPT2_LOGITS[1], rel=1e-5)
    np.testing.assert_allclose(logits[1, 5, :4], GPT2_LOGITS[2], atol=1e-5)


@pytest.mark.parametrize("knob", list(MODEL_KNOBS))
def test_model_knob_is_off_by_default_and_not_gpt2_when_on(knob):
    assert not getattr(ModelConfig(), knob) and ModelConfig().is_gpt2
    assert not ModelConfig(**{knob: MODEL_KNOBS[knob]}).is_gpt2  # so GPT-2 tools (HF export) refuse it


@pytest.mark.parametrize("knob", list(TRAIN_KNOBS))
def test_train_knob_is_off_by_default(knob):
    assert getattr(TrainConfig(), knob) == 0


def test_default_optimizer_state_keeps_its_tree_so_old_checkpoints_restore():
    params = params_of(GPT(ModelConfig(**BASE), rngs=nnx.Rngs(0)))
    cfg = TrainConfig()
    before = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), optim.update_rule(cfg))  # the chain as it was
    assert jax.tree.structure(optim.make(cfg).init(params)) == jax.tree.structure(before.init(params))


def test_default_schedule_is_still_warmup_then_cosine():
    cfg = TrainConfig(steps=1000, warmup_steps=100, lr=1e-3, min_lr=1e-4)
    cosine = optax.warmup_cosine_decay_schedule(0.0, 1e-3, 100, 1000, 1e-4)
    for step in (0, 50, 100, 400, 999, 1000):
        assert float(optim.schedule(cfg)(step)) == float(cosine(step))


# What each computes

def test_zero_init_proj_starts_every_block_as_the_identity_with_the_other_weights_drawn_the_same():
    cfg = ModelConfig(**BASE, zero_init_proj=True)
    model, gpt2 = GPT(cfg, rngs=nnx.Rngs(0)), GPT(ModelConfig(**BASE), rngs=nnx.Rngs(0))
    for name, value in flat(params_of(model)).items():
        zeroed = "wo_hkd" in name or "w_down_fd" in name
        np.testing.assert_array_equal(value, 0 if zeroed else flat(params_of(gpt2))[name])
    embedded = model.wte_vd[...][IDX] + model.wpe_td[...][:16]
    np.testing.assert_allclose(model.hidden(IDX)[0], model.ln_f(embedded), atol=1e-6)


def test_unet_skips_add_each_early_output_to_its_mirror_block_times_a_learned_gain():
    cfg = ModelConfig(**BASE | dict(n_layer=4), unet_skips=True)
    model = GPT(cfg, rngs=nnx.Rngs(0))
    assert model.skip_gain_l.shape == (2,) and np.all(model.skip_gain_l[...] == 1)
    model.skip_gain_l[...] = jnp.array([0.3, -0.7])
    b = [lambda x, block=block: block(x)[0] for block in model.blocks]
    o0 = b[0](model.wte_vd[...][IDX] + model.wpe_td[...][:16])
    o1 = b[1](o0)
    o2 = b[2](o1 + 0.3 * o1)     # block 2 = L-1-1 takes block 1's output
    o3 = b[3](o2 - 0.7 * o0)     # block 3 = L-1-0 takes block 0's
    np.testing.assert_allclose(model.hidden(IDX)[0], model.ln_f(o3), atol=1e-5)
    plain = GPT(ModelConfig(**BASE | dict(n_layer=4)), rngs=nnx.Rngs(0))
    model.skip_gain_l[...] = jnp.zeros(2)  # no skips: GPT-2 with the same weights
    np.testing.assert_allclose(model(IDX), plain(IDX), atol=1e-6)


def test_embed_skips_start_every_block_from_a_learned_mix_of_its_input_and_the_embeddings():
    model = GPT(ModelConfig(**BASE, embed_skips=True), rngs=nnx.Rngs(0))
    plain = GPT(ModelConfig(**BASE), rngs=nnx.Rngs(0))
    np.testing.assert_allclose(model(IDX), plain(IDX), atol=1e-6)  # λ = (1, 0) at start: GPT-2's function
    model.blocks[0].x0_mix_2[...] = jnp.array([0.5, 0.0])
    model.blocks[1].x0_mix_2[...] = jnp.array([2.0, -1.5])
    x0 = model.wte_vd[...][IDX] + model.wpe_td[...][:16]
    o0 = plain.blocks[0](0.5 * x0)[0]
    o1 = plain.blocks[1](2.0 * o0 - 1.5 * x0)[0]
    np.testing.assert_allclose(model.hidden(IDX)[0], model.ln_f(o1), atol=1e-5)


def test_value_embeds_share_tables_between_the_first_and_last_blocks():
    assert [ModelConfig(**BASE | dict(n_layer=6), value_embeds=2).value_table(i) for i in range(6)] == [
        0, 1, None, None, 0, 1]
    assert [ModelConfig(**BASE | dict(n_layer=3), value_embeds=1).value_table(i) for i in range(3)] == [0, None, 0]
    with pytest.raises(ConfigError, match="model.value_embeds=2 must be in"):
        ModelConfig(**BASE | dict(n_layer=3), value_embeds=2)


def test_value_embeds_mix_the_tokens_table_row_into_the_attention_values():
    cfg = ModelConfig(**BASE | dict(n_kv_head=2), value_embeds=1)
    model, plain = GPT(cfg, rngs=nnx.Rngs(0)), GPT(ModelConfig(**BASE | dict(n_kv_head=2)), rngs=nnx.Rngs(0))
    table_vhk = model.w_value_evhk[...][0]
    assert table_vhk.shape == (97, 2, 8)
    x_btd = jax.random.normal(jax.random.key(1), (2, 16, 32))
    attn = model.blocks[1].attn
    _, _, v_mixed = attn.qkv(x_btd, 0, table_vhk[IDX])
    _, _, v_plain = plain.blocks[1].attn.qkv(x_btd, 0)
    np.testing.assert_allclose(v_mixed, 0.5 * v_plain + 0.5 * table_vhk[IDX], atol=1e-6)
    for block in model.blocks:  # λ = (1, 0): the values are the plain ones, the logits GPT-2's
        block.attn.ve_mix_2[...] = jnp.array([1.0, 0.0])
    np.testing.assert_allclose(model(IDX), plain(IDX), atol=1e-6)


def test_trapezoid_warms_up_holds_then_cools_down_linearly_to_min_lr():
    cfg = TrainConfig(steps=1000, warmup_steps=100, lr=1e-3, min_lr=1e-4, cooldown_frac=0.4)
    lr = optim.schedule(cfg)
    assert float(lr(50)) == pytest.approx(5e-4)
    assert all(float(lr(step)) == pytest.approx(1e-3) for step in (100, 350, 600))
    assert float(lr(800)) == pytest.approx(1e-3 - 0.5 * 9e-4)
    assert float(lr(1000)) == pytest.approx(1e-4)
    muon = optim.schedule(cfg, 0.02)  # the Muon part keeps its own peak, cooled to the same share
    assert float(muon(600)) == pytest.approx(0.02) and float(muon(1000)) == pytest.approx(0.002)


def test_head_lr_scales_the_untied_unembeddings_step_alone():
    model = GPT(ModelConfig(**BASE, tie_embeddings=False), rngs=nnx.Rngs(0))
    params = params_of(model)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.1), params)
    def update(**train):
        tx = optim.make(TrainConfig(warmup_steps=0, lr=1e-3, **train))
        return flat(tx.update(grads, tx.init(params), params)[0])
    base, head = update(), update(head_lr=4e-3)
    for name, u in base.items():
        np.testing.assert_allclose(head[name], 4 * u if "w_unembed_vd" in name else u, rtol=1e-6)
    with pytest.raises(ConfigError, match="also set model.tie_embeddings=false"):
        Config(train=TrainConfig(head_lr=1e-2))


def test_target_val_loss_stops_at_the_first_evaluation_at_or_below_it(tmp_path):
    run = tmp_path / "run"
    result = run_in_process("train.py", "tiny", f"run.out_dir={run}", "train.target_val_loss=3.9")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "val_loss" in r]
    assert evals[0]["val_loss"] > 3.9 >= evals[-1]["val_loss"] and rows[-1]["step"] == 10 < 20
    assert "val loss at or below train.target_val_loss=3.9; stopping" in result.stdout
    assert (run / "checkpoints" / "10").is_dir()
