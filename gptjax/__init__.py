"""gptjax: train small GPTs in JAX/Flax from a config file, then sample from the checkpoint."""
