"""The sampler: greedy is argmax, filters hold, seeds reproduce, the cache changes nothing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gptjax import sampling
from gptjax.config import ModelConfig
from gptjax.model import GPT

CFG = ModelConfig(n_vocab=40, n_ctx=16, n_embd=32, n_head=4, n_layer=2)


@pytest.fixture(scope="module")
def model():
    return GPT(CFG, rngs=nnx.Rngs(0))


def gen(model, prompt, **kw):
    graphdef, params = nnx.split(model, nnx.Param)
    return sampling.generate(graphdef, params, CFG, prompt, **kw)


@jax.jit
def _next_greedy(model_params, window, last):
    # A fixed-size, zero-padded window: causality makes the padding invisible at `last`,
    # so one compilation serves every length.
    graphdef, params = model_params
    return nnx.merge(graphdef, params)(window)[0, last].argmax()


def greedy_by_hand(model, prompt, n):
    """Greedy decoding the slow, obvious way: the full model on the last n_ctx tokens."""
    split = nnx.split(model, nnx.Param)
    seq = list(prompt)
    for _ in range(n):
        context = seq[-CFG.n_ctx:]
        window = jnp.zeros((1, CFG.n_ctx), jnp.int32).at[0, :len(context)].set(jnp.asarray(context))
        seq.append(int(_next_greedy(split, window, len(context) - 1)))
    return seq[len(prompt):]


@pytest.mark.parametrize("prompt_len, n_new", [(1, 10), (5, 30), (CFG.n_ctx + 4, 6)])  # inside, across, past the window
def test_greedy_is_argmax_of_the_last_window(model, prompt_len, n_new):
    prompt = list(range(1, prompt_len + 1))
    prompt = [p % CFG.n_vocab for p in prompt]
    expected = greedy_by_hand(model, prompt, n_new)
    assert gen(model, prompt, max_new_tokens=n_new, temperature=0.0) == [expected]
    assert gen(model, prompt, max_new_tokens=n_new, temperature=0.0, use_cache=False) == [expected]


def test_cache_and_recompute_draw_the_same_tokens(model):
    kw = dict(max_new_tokens=40, num_samples=3, temperature=1.0, seed=7)
    assert gen(model, [3, 4, 5], **kw) == gen(model, [3, 4, 5], use_cache=False, **kw)


def test_shift_window_is_exact_inside_the_window_and_deterministic_past_it(model):
    inside = dict(max_new_tokens=CFG.n_ctx - 3, temperature=1.0, seed=3)
    assert gen(model, [1, 2, 3], window="shift", **inside) == gen(model, [1, 2, 3], **inside)
    past = dict(max_new_tokens=3 * CFG.n_ctx, temperature=1.0, seed=3, window="shift")
    tokens = gen(model, [1, 2, 3], **past)
    assert tokens == gen(model, [1, 2, 3], **past)
    assert len(tokens[0]) == 3 * CFG.n_ctx and all(0 <= t < CFG.n_vocab for t in tokens[0])


def test_cached_logits_equal_recomputed_ones_up_to_the_window_and_past_it(model):
    """Planted bug: the KV cache used one token past the window (its slot clamped into the last one), which
    greedy tokens of a random model need not show: the sampler's next-token logits, cached and recomputed,
    from a 3-token prompt to twice the window, agree to 1e-5."""
    graphdef, params = nnx.split(model, nnx.Param)
    buf = jnp.asarray(np.random.default_rng(0).integers(0, CFG.n_vocab, size=(2, 3 * CFG.n_ctx)), jnp.int32)

    @jax.jit
    def differences(params):
        net = nnx.merge(graphdef, params)
        cached, recomputed = sampling._Logits(net, 2, True, "exact"), sampling._Logits(net, 2, False, "exact")

        def step(carry, cur):
            logits, cache, offset = cached(buf, carry[0], cur, carry[1])
            return (cache, offset), jnp.abs(logits - recomputed.recomputed(buf, cur)).max()

        _, cache = cached.prefill(buf, 3, 0)
        return jax.lax.scan(step, (cache, jnp.int32(0)), jnp.arange(4, 2 * CFG.n_ctx))[1]

    assert float(differences(params).max()) < 1e-5


def test_same_seed_same_tokens_and_seeds_differ(model):
    kw = dict(max_new_tokens=20, num_samples=2, temperature=1.5)
    a = gen(model, [1, 2], seed=1, **kw)
    assert a == gen(model, [1, 2], seed=1, **kw)
    assert a != gen(model, [1, 2], seed=2, **kw)
    assert a[0] != a[1]  # samples in a batch are independent draws


def test_top_k_never_draws_outside_the_k():
    logits = jax.random.normal(jax.random.PRNGKey(0), (1, 50)) * 3
    top3 = set(np.argsort(-np.asarray(logits[0]))[:3].tolist())
    keys = jax.random.split(jax.random.PRNGKey(1), 2000)
    draws = jax.vmap(lambda k: sampling.sample_token(logits, k, temperature=2.0, top_k=3, top_p=1.0, vocab_size=50))(keys)
    assert set(np.asarray(draws).ravel().tolist()) == top3


def test_top_p_keeps_the_smallest_set_with_that_mass():
    logits = jnp.log(jnp.array([[0.05, 0.5, 0.15, 0.3]]))
    keys = jax.random.split(jax.random.PRNGKey(2), 2000)
    draw = jax.vmap(lambda k, p: sampling.sample_token(logits, k, temperature=1.0, top_k=4, top_p=p, vocab_size=4),
                    in_axes=(0, None))
    assert set(np.asarray(draw(keys, 0.7)).ravel().tolist()) == {1, 3}
    assert set(np.asarray(draw(keys, 0.5)).ravel().tolist()) == {1}
    assert set(np.asarray(draw(keys, 1.0)).ravel().tolist()) == {0, 1, 2, 3}
    counts = np.bincount(np.asarray(draw(keys, 1.0)).ravel(), minlength=4) / 2000
    np.testing.assert_allclose(counts, [0.05, 0.5, 0.15, 0.3], atol=0.04)


def kept_by_definition(logits_v, temperature, top_k, top_p, vocab_size):
    """Ids that temperature -> top-k -> top-p keep, computed plainly in float64, and the margin to top_p."""
    scaled = logits_v[:vocab_size].astype(np.float64) / temperature
    order = np.argsort(-scaled, kind="stable")[:top_k]
    probs = np.exp(scaled[order] - scaled[order[0]])
    mass_before = np.cumsum(probs / probs.sum()) - probs / probs.sum()
    n_keep = int(np.sum(mass_before < top_p))  # the smallest prefix whose mass reaches top_p
    margin = np.inf if top_p >= 1 else float(np.min(np.abs(mass_before - top_p)))  # top_p 1 keeps all k
    return set(order[:n_keep].tolist()), margin


def test_kept_set_matches_its_definition_on_a_gpt2_sized_vocabulary():
    V, vocab_size = 50304, 50257  # GPT-2's vocabulary padded as the models pad it
    rng = np.random.default_rng(0)
    logits_bv = rng.normal(size=(48, V)).astype(np.float32) * rng.uniform(0.5, 4, size=(48, 1)).astype(np.float32)
    filtered = jax.jit(sampling.filter_logits)
    checked = 0
    for temperature, top_k, top_p in [(0.8, 200, 1.0), (1.0, 40, 1.0), (1.3, 5000, 1.0), (0.7, 1000, 0.9),
                                      (1.0, vocab_size, 0.95), (0.5, 50, 0.5), (1.0, 1, 1.0)]:
        out = np.asarray(filtered(jnp.asarray(logits_bv), temperature=temperature, top_k=top_k, top_p=top_p,
                                  vocab_size=vocab_size))
        for row, out_v in zip(logits_bv, out, strict=True):
            want, margin = kept_by_definition(row, temperature, top_k, top_p, vocab_size)
            if margin < 1e-5:  # float32 and float64 may round a mass this close to top_p either way
                continue
            assert set(np.flatnonzero(np.isfinite(out_v)).tolist()) == want, (temperature, top_k, top_p)
            checked += 1
    assert checked > 250  # most rows: only a mass within 1e-5 of top_p is skipped


LAW_LOGITS = np.array([2.0, 1.4, 1.1, 0.5, 0.2, -0.3, -0.9, -1.6])


def law_by_definition(temperature, top_k, top_p):
    """The exact distribution sampling should follow: softmax(logits / T) over the kept set, in float64."""
    kept, margin = kept_by_definition(LAW_LOGITS, temperature, top_k, top_p, len(LAW_LOGITS))
    assert margin > 0.02  # the settings below sit well away from a top-p boundary
    probs = np.exp(LAW_LOGITS / temperature) * np.isin(np.arange(len(LAW_LOGITS)), list(kept))
    return probs / probs.sum()


@jax.jit
def draw_many(key, temperature, top_k, top_p):
    logits_bv = jnp.broadcast_to(jnp.asarray(LAW_LOGITS, jnp.float32), (200_000, len(LAW_LOGITS)))
    tokens = sampling.sample_token(logits_bv, key, temperature=temperature, top_k=top_k, top_p=top_p,
                                   vocab_size=len(LAW_LOGITS))
    return jnp.bincount(tokens, length=len(LAW_LOGITS))


@pytest.mark.parametrize("temperature", [0.5, 2.0])
# (3, 0.65): top-p over the top-k's renormalised mass; counting a (k+1)-th token's would keep 3, not 2, at T = 2.
@pytest.mark.parametrize("top_k, top_p", [(8, 1.0), (4, 1.0), (8, 0.75), (5, 0.8), (3, 0.65)])
def test_sampled_frequencies_follow_the_tempered_filtered_softmax(temperature, top_k, top_p):
    """Planted bug: the sampler ignoring temperature (the division dropped in gptjax/sampling.py), or
    drawing the wrong proportions inside top-k / top-p. 200,000 draws against the exact law: a chi-square
    past 40 (7 degrees of freedom at most; p < 1e-5 under the right law) fails, and the law at T = 1
    gives thousands here."""
    law = law_by_definition(temperature, top_k, top_p)
    counts = np.asarray(draw_many(jax.random.PRNGKey(7), temperature, top_k, top_p))
    assert counts.sum() == 200_000
    assert np.all(counts[law == 0] == 0)  # nothing outside the kept set
    expected = 200_000 * law[law > 0]
    chi2 = float(np.sum((counts[law > 0] - expected) ** 2 / expected))
    assert chi2 < 40, (chi2, counts / 200_000, law)


def test_padded_vocab_ids_are_never_drawn():
    logits = jnp.zeros((1, 8)).at[0, 6].set(50.0)  # the padded id 6 is by far the most likely
    assert int(sampling.sample_token(logits, jax.random.PRNGKey(0), temperature=0.0, top_k=8, top_p=1.0,
                                     vocab_size=5)[0]) < 5
    assert int(sampling.sample_token(logits, jax.random.PRNGKey(0), temperature=1.0, top_k=8, top_p=1.0,
                                     vocab_size=5)[0]) < 5


def test_stop_token_ends_a_sample(model):
    first = greedy_by_hand(model, [1, 2, 3], 1)[0]
    assert gen(model, [1, 2, 3], max_new_tokens=10, temperature=0.0, stop_id=first) == [[]]


def test_one_compilation_for_every_prompt_length_and_setting(model):
    gen(model, [1], max_new_tokens=12, temperature=0.0)
    before = sampling._generate._cache_size()
    for prompt, temperature, top_k, top_p in [([1, 2, 3], 0.5, 5, 0.9), ([4] * 9, 1.0, None, 1.0),
                                               (list(range(30)), 0.8, 2, 0.5)]:
        gen(model, prompt, max_new_tokens=12, temperature=temperature, top_k=top_k, top_p=top_p)
    assert sampling._generate._cache_size() == before


@pytest.mark.parametrize("kw, message", [
    (dict(temperature=-0.1), "--temperature must be >= 0"),
    (dict(top_k=0), "--top-k must be between 1 and the vocabulary size 40"),
    (dict(top_k=41), "--top-k must be between 1"),
    (dict(top_p=0.0), "--top-p must be in"),
    (dict(top_p=1.5), "--top-p must be in"),
    (dict(max_new_tokens=-1), "--max-new-tokens must be >= 0"),
    (dict(num_samples=0), "--num-samples must be >= 1"),
])
def test_bad_options(kw, message):
    options = dict(temperature=1.0, top_k=None, top_p=1.0, max_new_tokens=10, num_samples=1, vocab_size=40) | kw
    with pytest.raises(sampling.SamplerError, match=message):
        sampling.check_options(**options)
