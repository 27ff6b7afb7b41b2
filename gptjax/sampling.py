"""Generation: temperature, top-k, top-p and a stop token, the whole loop compiled once.

The token buffer has a fixed shape (n_ctx + max_new_tokens), and the prompt length,
temperature, top-k and top-p are traced values, so no prompt or setting recompiles.
While the sequence fits the context window each new token is one cached decode step;
past it, learned absolute positions make a cache inexact, so (as nanoGPT does) the
model reruns on the last n_ctx tokens for each new token, at a fixed shape.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gptjax.config import ModelConfig
from gptjax.config.sections import MAX_SEED
from gptjax.errors import UserError
from gptjax.model import init_cache


class SamplerError(UserError):
    """Sampler options that make no sense; the message says which and why."""


def check_options(*, temperature: float, top_k: int | None, top_p: float, max_new_tokens: int,
                  num_samples: int, vocab_size: int, seed: int = 0) -> None:
    if not temperature >= 0:
        raise SamplerError(f"--temperature must be >= 0 (0 is greedy), got {temperature}")
    if top_k is not None and not 0 < top_k <= vocab_size:
        raise SamplerError(f"--top-k must be between 1 and the vocabulary size {vocab_size}, got {top_k}")
    if not 0 < top_p <= 1:
        raise SamplerError(f"--top-p must be in (0, 1], got {top_p}")
    if max_new_tokens < 0:
        raise SamplerError(f"--max-new-tokens must be >= 0, got {max_new_tokens}")
    if num_samples < 1:
        raise SamplerError(f"--num-samples must be >= 1, got {num_samples}")
    if not 0 <= seed <= MAX_SEED:
        raise SamplerError(f"--seed must be between 0 and {MAX_SEED}, got {seed}")


def memory_needed(cfg: ModelConfig, num_samples: int, max_new_tokens: int) -> int:
    """Bytes generate() holds, roughly: float32 weights, and per sample its KV cache, token buffer, logits and
    the prompt's forward pass (per layer and position ~16 D floats and H·T attention weights)."""
    prefill = cfg.n_ctx * (cfg.n_layer * (16 * cfg.n_embd + 2 * cfg.n_head * cfg.n_ctx) + 2 * cfg.n_vocab)
    per_sample = (2 * cfg.n_layer * cfg.n_ctx * cfg.n_embd + 2 * (2 * cfg.n_ctx + max_new_tokens)
                  + 4 * cfg.n_vocab + prefill) * 4
    return 4 * cfg.n_params + num_samples * per_sample


def check_memory(cfg: ModelConfig, num_samples: int, max_new_tokens: int, have: int, what: str) -> None:
    """Refuse up front what cannot fit, rather than swap or be killed after minutes."""
    need = memory_needed(cfg, num_samples, max_new_tokens)
    if need > have:
        raise SamplerError(f"--num-samples {num_samples} with --max-new-tokens {max_new_tokens} needs about "
                           f"{need / 2**30:.1f} GiB, more than the {have / 2**30:.1f} GiB {what}; "
                           f"ask for fewer samples or tokens at once")


def filter_logits(logits_bv, *, temperature, top_k, top_p, vocab_size):
    """Logits scaled by 1/temperature with everything outside top-k / top-p set to -inf."""
    V = logits_bv.shape[-1]
    logits_bv = jnp.where(jnp.arange(V) < vocab_size, logits_bv, -jnp.inf)  # padded ids never appear
    scaled = logits_bv / jnp.maximum(temperature, 1e-6)
    sorted_bv = -jnp.sort(-scaled, axis=-1)
    ranks = jnp.arange(V)
    sorted_bv = jnp.where(ranks < top_k, sorted_bv, -jnp.inf)
    probs = jax.nn.softmax(sorted_bv, axis=-1)
    # Keep the smallest prefix whose mass reaches top_p (the most likely token always stays); only the
    # top-k ranks count, since float32 mass can stop just below 1.0 and would otherwise admit the -inf tail.
    reaching = (jnp.cumsum(probs, axis=-1) - probs < top_p) & (ranks < top_k) & (sorted_bv > -jnp.inf)
    n_keep = jnp.sum(reaching, axis=-1, keepdims=True)
    threshold = jnp.take_along_axis(sorted_bv, jnp.maximum(n_keep - 1, 0), axis=-1)
    return jnp.where(scaled >= threshold, scaled, -jnp.inf)


def sample_token(logits_bv, key, *, temperature, top_k, top_p, vocab_size):
    """One token per row: argmax at temperature 0, else a draw from the filtered softmax."""
    greedy = jnp.argmax(jnp.where(jnp.arange(logits_bv.shape[-1]) < vocab_size, logits_bv, -jnp.inf), axis=-1)
    filtered = filter_logits(logits_bv, temperature=temperature, top_k=top_k, top_p=top_p, vocab_size=vocab_size)
    drawn = jax.random.categorical(key, filtered, axis=-1)
    return jnp.where(temperature == 0, greedy, drawn).astype(jnp.int32)


class _Logits:
    """Next-token logits at position `cur` inside the sampler's loop: from the KV cache, or recomputed."""

    def __init__(self, model, batch: int, use_cache: bool, window: str):
        self.model, self.n_ctx, self.batch = model, model.cfg.n_ctx, batch
        self.use_cache, self.window = use_cache, window

    def recomputed(self, buf, cur):
        # The model on the last n_ctx tokens before `cur` (or the first n_ctx, if fewer).
        start = jnp.maximum(cur - self.n_ctx, 0)
        logits_btv = self.model(jax.lax.dynamic_slice_in_dim(buf, start, self.n_ctx, axis=1))
        return jax.lax.dynamic_index_in_dim(logits_btv, cur - 1 - start, axis=1, keepdims=False)

    def prefill(self, buf, cur, offset):
        # One pass over the fixed-size window starting at `offset` fills a fresh cache
        # (slots past `cur` hold junk that decoding overwrites before it is ever attended).
        window_bt = jax.lax.dynamic_slice_in_dim(buf, offset, self.n_ctx, axis=1)
        logits_btv, cache = self.model.decode(window_bt, init_cache(self.model.cfg, self.batch, self.model.dtype), 0)
        return jax.lax.dynamic_index_in_dim(logits_btv, cur - 1 - offset, axis=1, keepdims=False), cache

    def cached(self, buf, cache, cur, offset):
        token_b1 = jax.lax.dynamic_slice_in_dim(buf, cur - 1, 1, axis=1)
        logits_b1v, cache = self.model.decode(token_b1, cache, cur - 1 - offset)
        return logits_b1v[:, 0], cache

    def __call__(self, buf, cache, cur, offset):
        if not self.use_cache:
            return self.recomputed(buf, cur), cache, offset
        if self.window == "exact":  # past the window, positions shift: only a recompute is exact
            logits, cache = jax.lax.cond(cur <= self.n_ctx, lambda: self.cached(buf, cache, cur, offset),
                                         lambda: (self.recomputed(buf, cur), cache))
            return logits, cache, offset
        # "shift" (approximate): when the cache is full, re-prefill its newest half and go on caching.
        full = cur - offset > self.n_ctx
        offset = jnp.where(full, cur - self.n_ctx // 2, offset)
        logits, cache = jax.lax.cond(full, lambda: self.prefill(buf, cur, offset),
                                     lambda: self.cached(buf, cache, cur, offset))
        return logits, cache, offset


@partial(jax.jit, static_argnames=("graphdef", "use_cache", "window"))
def _generate(graphdef, params, buf_bl, prompt_len, n_new, key, temperature, top_k, top_p, vocab_size, stop_id,
              use_cache=True, window="exact"):
    B = buf_bl.shape[0]
    next_logits = _Logits(nnx.merge(graphdef, params), B, use_cache, window)

    def body(carry):
        buf, cache, cur, offset, logits, done = carry
        token = sample_token(logits, jax.random.fold_in(key, cur), temperature=temperature, top_k=top_k,
                             top_p=top_p, vocab_size=vocab_size)
        token = jnp.where(done, stop_id, token)
        buf = jax.lax.dynamic_update_slice_in_dim(buf, token[:, None], cur, axis=1)
        logits, cache, offset = next_logits(buf, cache, cur + 1, offset)
        return buf, cache, cur + 1, offset, logits, done | (token == stop_id)

    def cond(carry):
        _, _, cur, _, _, done = carry
        return (cur < prompt_len + n_new) & ~jnp.all(done)

    logits, cache = next_logits.prefill(buf_bl, prompt_len, 0)
    init = (buf_bl, cache, prompt_len, jnp.int32(0), logits, jnp.zeros((B,), bool))
    buf, _, cur, _, _, _ = jax.lax.while_loop(cond, body, init)
    return buf, cur


def generate(graphdef, params, cfg: ModelConfig, prompt: list[int], *, max_new_tokens: int, num_samples: int = 1,
             temperature: float = 1.0, top_k: int | None = None, top_p: float = 1.0, seed: int = 0,
             vocab_size: int | None = None, stop_id: int | None = None, use_cache: bool = True,
             window: str = "exact") -> list[list[int]]:
    """New tokens (prompt excluded) for each sample, cut after the stop token if one is drawn.

    window="exact" reruns the last n_ctx tokens for each token past the context window;
    window="shift" is approximate and faster: when the window fills, the newest n_ctx/2
    tokens are re-encoded from position 0 and caching goes on.
    """
    vocab_size = vocab_size or cfg.n_vocab
    if not prompt:
        raise SamplerError("the prompt encodes to no tokens")
    if window not in ("exact", "shift"):
        raise SamplerError(f"window must be exact or shift, got {window!r}")
    context = prompt[-cfg.n_ctx:]  # only the last n_ctx tokens can influence the next one
    # Room for a whole window past the last token, so fixed-size slices never clamp.
    buf = np.zeros((num_samples, 2 * cfg.n_ctx + max_new_tokens), np.int32)
    buf[:, :len(context)] = context
    out, cur = _generate(graphdef, params, jnp.asarray(buf), jnp.int32(len(context)), jnp.int32(max_new_tokens),
                         jax.random.PRNGKey(seed), jnp.float32(temperature), jnp.int32(top_k or cfg.n_vocab),
                         jnp.float32(top_p), jnp.int32(vocab_size), jnp.int32(-1 if stop_id is None else stop_id),
                         use_cache=use_cache, window=window)
    new = np.asarray(out)[:, len(context):int(cur)]
    samples = []
    for row in new.tolist():
        if stop_id is not None and stop_id in row:
            row = row[:row.index(stop_id)]
        samples.append(row)
    return samples
