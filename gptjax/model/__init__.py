"""The GPT: the model top-down (gpt.py), its attention kernels (attention.py), weight initialisation (init.py)."""

from gptjax.model.attention import attention, attention_weights, blocked_causal_attention
from gptjax.model.gpt import GPT, KVCache, Tap, abstract_model, add_bias, compute_dtype, count_params, dense, init_cache
from gptjax.model.init import next_key, normal

__all__ = ["GPT", "KVCache", "Tap", "abstract_model", "add_bias", "attention", "attention_weights",
           "blocked_causal_attention", "compute_dtype", "count_params", "dense", "init_cache", "next_key", "normal"]
