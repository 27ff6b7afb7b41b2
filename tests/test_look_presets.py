"""Looking inside every architecture: the residual stream, attention weights, the cached and patched pass
and logit attribution are the model's own on the shipped presets' architectures and every knob, not GPT-2's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gptjax import config
from gptjax.data.tokenizer import CharTokenizer
from gptjax.look import analysis, attribution, hooks
from gptjax.look import cli as inspect
from gptjax.model import abstract_model
from gptjax.model.layers import LayerNorm, RMSNorm
from tests.conftest import run_main
from tests.test_inspect import randomized
from tests.test_look_heads import save_run

CHARS = list("abcdefghij ")
TINY = ["model.n_ctx=16", "model.n_embd=16", "model.n_head=2", "model.n_layer=3", f"model.n_vocab={len(CHARS)}"]
LEVERS = ["model.unet_skips=true", "model.embed_skips=true", "model.value_embeds=1", "model.zero_init_proj=true",
          "model.tie_embeddings=false", "model.logit_softcap=4"]
CASES = {  # name: (preset, overrides beyond the tiny shape)
    "shakespeare_char_cpu": ("shakespeare_char_cpu", []),
    "shakespeare_char_modern": ("shakespeare_char_modern", []),
    "speedrun": ("speedrun", []),
    # Every lever at once, on rotary and on learned positions, with grouped K/V heads, SwiGLU and biases.
    "speedrun_every_lever": ("speedrun", [*LEVERS, "model.n_kv_head=1", "model.mlp=swiglu", "model.bias=true"]),
    "gpt2_with_levers": ("shakespeare_char_cpu", LEVERS),
}
IDS = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 10, 0]
forward = nnx.jit(lambda model, idx_bt: model(idx_bt))  # the model's own pass, its fast attention kernel


def model_cfg(case: str):
    preset, overrides = CASES[case]
    return config.load(preset, [*TINY, *overrides])


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    """(name, a model of that architecture with every weight random: gains, mixes and skips too)."""
    return request.param, randomized(model_cfg(request.param).model)


def test_the_residual_stream_read_out_is_the_models_logits(case):
    _, model = case
    idx_bt = jnp.asarray([IDS])
    xs = analysis.residual_stream(model, idx_bt)
    assert len(xs) == model.cfg.n_layer + 1
    logits_tv = forward(model, idx_bt)[0]
    np.testing.assert_allclose(model.unembed(model.ln_f(xs[-1]))[0], logits_tv, atol=1e-5)
    lens_ltv = analysis.logit_lens(model, IDS)
    assert lens_ltv.shape == (model.cfg.n_layer + 1, len(IDS), len(CHARS))
    np.testing.assert_allclose(lens_ltv[-1], logits_tv, atol=1e-5)
    np.testing.assert_allclose(lens_ltv[0], model.unembed(model.ln_f(xs[0]))[0], atol=1e-5)


def test_the_cached_pass_and_its_attention_weights_are_the_models_own(case):
    # The weights feed each head's output z and so everything after it: a pass through them that gives
    # the fast kernel's logits has the model's own weights (RoPE, QK-norm, grouped heads included).
    _, model = case
    idx_bt = jax.random.randint(jax.random.PRNGKey(0), (2, 12), 0, len(CHARS))
    logits_btv, cache = hooks.run_with_cache(model, idx_bt)
    np.testing.assert_allclose(logits_btv, forward(model, idx_bt), atol=1e-5)
    L, H = model.cfg.n_layer, model.cfg.n_head
    assert cache.probs_lbhts.shape == (L, 2, H, 12, 12) and cache.z_lbthk.shape == (L, 2, 12, H, model.cfg.head_dim)
    assert (cache.pos_td is None) == (model.cfg.positions == "rope")
    attn_lhts = analysis.attention_maps(model, IDS)
    np.testing.assert_allclose(attn_lhts, hooks.run_with_cache(model, IDS)[1].probs_lbhts[:, 0], atol=1e-6)
    np.testing.assert_allclose(attn_lhts.sum(-1), 1, atol=1e-5)
    assert np.all(np.triu(attn_lhts, k=1) == 0)
    # Knocking out a whole layer's heads is knocking out its attention but for b_O.
    patch = hooks.Patch.identity(model.cfg)
    for h in range(H):
        patch = patch.ablate_head(1, h)
    _, knocked = hooks.run_with_cache(model, idx_bt, patch)
    bias = 0 if model.blocks[1].attn.bo_d is None else model.blocks[1].attn.bo_d[...]
    np.testing.assert_allclose(knocked.attn_out_lbtd[1], jnp.broadcast_to(bias, (2, 12, model.cfg.n_embd)), atol=1e-6)


@pytest.mark.parametrize("position, target", [(-1, 3), (4, 0)])
def test_attributions_sum_to_the_logit_on_every_architecture(case, position, target):
    _, model = case
    a = attribution.attribute(model, IDS, target, position)
    logit = float(forward(model, jnp.asarray([IDS]))[0, position, target])
    assert a.logit == pytest.approx(logit, abs=1e-5)
    cap = model.cfg.logit_softcap
    assert (cap * np.tanh(a.uncapped / cap) if cap else a.uncapped) == pytest.approx(logit, abs=1e-5)
    assert a.total() == pytest.approx(a.uncapped, abs=1e-4)
    assert sum(v for _, v in a.rows()) == pytest.approx(a.uncapped, abs=1e-4)
    names = [name for name, _ in a.rows()]
    assert ("position embedding W_P" in names) == (model.cfg.positions == "learned")
    assert any(name.startswith(f"final {a.norm}") for name in names) == (model.cfg.bias and a.norm == "LayerNorm")


@pytest.mark.parametrize("norm", [LayerNorm, RMSNorm])
def test_a_frozen_norm_is_the_norm_at_its_own_point(norm):
    cfg = config.ModelConfig(n_vocab=5, n_embd=16, n_head=2)
    ln = norm(cfg) if norm is LayerNorm else norm(16)
    for param, key in zip(nnx.state(ln, nnx.Param).values(), jax.random.split(jax.random.PRNGKey(0), 2)):
        param.set_value(param.get_value() + jax.random.normal(key, param.get_value().shape))
    x_td = 3 * jax.random.normal(jax.random.PRNGKey(1), (4, 16)) + 1
    bias = ln.bias_d[...] if getattr(ln, "bias_d", None) is not None else 0
    np.testing.assert_allclose(ln.frozen(x_td)(x_td) + bias, ln(x_td), atol=1e-5)
    parts = jax.random.normal(jax.random.PRNGKey(2), (3, 4, 16))  # linear: the parts' images sum to the whole's
    np.testing.assert_allclose(sum(ln.frozen(x_td)(p) for p in parts), ln.frozen(x_td)(parts.sum(0)), atol=1e-5)


def test_the_params_table_names_every_lever_and_an_untied_unembedding():
    cfg = model_cfg("speedrun_every_lever").model
    groups = analysis.param_groups(abstract_model(cfg))
    names = {g.name for g in groups}
    known = {name.format(norm="RMSNorm") for name in analysis.GROUPS.values()}
    assert names <= known, names - known  # no parameter left under its raw path
    assert "unembedding W_U" in names and analysis.TIED_UNEMBEDDING not in names
    assert {"RMSNorm ln_1", "final RMSNorm ln_f", "value embeddings", "U-net skip gains"} <= names
    assert sum(g.count for g in groups) == cfg.n_params


def test_cli_lens_and_attribute_on_a_speedrun_run(tmp_path):
    cfg = config.load("speedrun", [*TINY, *CASES["speedrun_every_lever"][1], f"run.out_dir={tmp_path / 'run'}"])
    model = randomized(cfg.model, seed=3)
    save_run(tmp_path / "run", cfg, model, CharTokenizer(CHARS))
    prompt = "abcabc dea"
    result = run_main(inspect.main, ["lens", str(tmp_path / "run"), "--prompt", prompt])
    assert result.returncode == 0, result.stderr
    last_stage = [line.split("'")[-2] for line in result.stdout.splitlines()[2:]]  # the last column's top token
    top = np.asarray(forward(model, jnp.asarray([CharTokenizer(CHARS).encode(prompt)]))[0]).argmax(-1)
    assert last_stage == [CHARS[i] for i in top]
    result = run_main(inspect.main, ["attribute", str(tmp_path / "run"), "--prompt", prompt])
    assert result.returncode == 0, result.stderr
    head = result.stdout.splitlines()[0]
    assert "before the soft cap" in head and "RMS frozen" in head and "position embedding" not in result.stdout
