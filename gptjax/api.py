"""The Python API for notebooks and scripts: load a config, fit (train) it, load a run, sample from it."""

from __future__ import annotations

import logging
from pathlib import Path


def load_config(name_or_path: str | None = None, *overrides: str):
    """A preset name or YAML path (default: the CPU preset) with `section.key=value` overrides, checked."""
    from gptjax import config

    return config.load(name_or_path, list(overrides))


def fit(cfg) -> dict:
    """Train (or resume) cfg's run to train.steps, as train.py does; returns the last metrics row."""
    from gptjax.train import trainer

    _quiet()
    return trainer.train(cfg)


def load_run(run_dir: str | Path, step: int | str = "latest"):
    """A trained run: .cfg, .tokenizer, .params, .step, and .model() for the Flax module."""
    from gptjax.train import runs

    _quiet()
    return runs.load(run_dir, step)


def sample(run, prompt: str = "", *, max_new_tokens: int = 200, num_samples: int = 1, temperature: float = 0.8,
           top_k: int | None = None, top_p: float = 1.0, seed: int = 0, window: str = "exact") -> list[str]:
    """Continuations of `prompt` (not included), as sample.py prints them; same seed, same text."""
    import jax

    from gptjax import sampling
    from gptjax.train import resources

    tok = run.tokenizer
    sampling.check_options(temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens,
                           num_samples=num_samples, vocab_size=tok.vocab_size, seed=seed)
    sampling.check_memory(run.cfg.model, num_samples, max_new_tokens, *resources.device_memory(jax.devices()[0]))
    ids = sampling.generate(run.graphdef, run.params, run.cfg.model, tok.encode(prompt) if prompt else tok.bos_ids,
                            max_new_tokens=max_new_tokens, num_samples=num_samples, temperature=temperature,
                            top_k=top_k, top_p=top_p, seed=seed, vocab_size=tok.vocab_size, stop_id=tok.eot_id,
                            window=window)
    return [tok.decode(new) for new in ids]


def _quiet() -> None:
    # orbax reports routine saves and restores through absl at WARNING; only errors concern a user.
    logging.getLogger("absl").setLevel(logging.ERROR)
