"""model.flops_per_token against XLA's own count of the compiled train step, knob by knob.

XLA's cost analysis counts every operation of the optimised program: each dot as 2·M·N·K, each
elementwise op (norms, GELU, softmax, cross-entropy, AdamW) per element, the embedding gradient's
scatter-add. The formula counts the matmuls only, so the shapes here are ones where matmuls dominate
(D = 256: the rest is 2-3% of XLA's count; 5% at the attention-heavy D = 64). T = 64 fits the CPU's causal
attention in one block, which computes every score (masked ones too), as the formula's full 12·L·T·D
counts them. At these shapes a formula that dropped SwiGLU's third matrix would be 16% low, one that
ignored grouped K/V heads 12% high, one that counted a separate W_U and the input table both 24% high,
and one without the attention term 12% low on the attention-heavy shape.
"""

import jax
import jax.numpy as jnp
import pytest

from gptjax import config, sharding
from gptjax.train.state import build

SHAPE = ["model.n_embd=256", "model.n_head=8", "model.n_layer=1", "model.n_ctx=64", "model.n_vocab=1024",
         "train.batch_size=4", "train.grad_accum=1"]
KNOBS = {
    "gpt2": [],
    "swiglu": ["model.mlp=swiglu"],
    "relu2_no_bias": ["model.mlp=relu2", "model.bias=false"],
    "multi_query": ["model.n_kv_head=1"],
    "untied_rope_qk_norm": ["model.tie_embeddings=false", "model.positions=rope", "model.qk_norm=true",
                            "model.norm=rmsnorm", "model.logit_softcap=30"],
    "modern": ["model.mlp=swiglu", "model.n_kv_head=2", "model.tie_embeddings=false", "model.positions=rope"],
    "attention_heavy": ["model.n_embd=64", "model.n_head=4", "model.n_vocab=128"],
    # The speedrun's levers: value tables are looked up (not in N); the U-net and x0 gains are elementwise.
    "speedrun_levers": ["model.n_layer=2", "model.value_embeds=1", "model.unet_skips=true", "model.embed_skips=true",
                        "model.zero_init_proj=true"],
    # Multi-token prediction: its D x D map through N, and a second use of the unembedding.
    "mtp": ["model.mtp_weight=0.3"],
}


def xla_flops(cfg: config.Config) -> float:
    pieces = build(cfg, sharding.make_mesh(cfg.mesh, jax.devices()[:1]))
    batch = jax.ShapeDtypeStruct((1, cfg.train.batch_size, cfg.model.n_ctx), jnp.int32)
    cost = pieces.train_step.lower(pieces.abstract_state, batch, batch).compile().cost_analysis()
    return (cost[0] if isinstance(cost, list) else cost)["flops"]  # older JAX: a list of one


@pytest.mark.parametrize("knob", KNOBS)
def test_flops_per_token_is_within_10_percent_of_xla(knob):
    cfg = config.load("tiny", [*SHAPE, *KNOBS[knob]])
    ours = cfg.model.flops_per_token() * cfg.tokens_per_step
    assert xla_flops(cfg) == pytest.approx(ours, rel=0.10)


def test_the_knobs_move_the_count_as_the_matrices_do():
    count = {k: config.load("tiny", [*SHAPE, *v]).model.flops_per_token() for k, v in KNOBS.items()}
    D, F, T, L = 256, 8 * 256 // 3, 64, 1
    # SwiGLU: three D x 8D/3 matrices (and two 8D/3 biases) for GELU's two D x 4D (one 4D bias).
    assert count["swiglu"] - count["gpt2"] == 6 * L * (3 * D * F - 8 * D * D + 2 * F - 4 * D)
    assert count["multi_query"] - count["gpt2"] == -6 * L * (2 * D * D + 2 * D) * 7 // 8  # 1 K/V head of 8
    # A separate W_U multiplies as the tied table did, and the input table is then only looked up: no change.
    untied = config.load("tiny", [*SHAPE, "model.tie_embeddings=false"]).model
    assert untied.flops_per_token() == count["gpt2"] and untied.n_params == untied.n_compute_params + (1024 + T) * D
    assert config.load("tiny", SHAPE).model.flops_per_token(causal_half=True) == count["gpt2"] - 6 * L * T * D
