"""The GPT: the model top-down (gpt.py), its attention kernels, and weight initialisation."""

from gptjax.model.gpt import (
                              GPT,
                              MLP,
                              Attention,
                              Block,
                              KVCache,
                              LayerNorm,
                              add_bias,
                              causal_attention,
                              compute_dtype,
                              count_params,
                              init_cache,
                              next_key,
                              normal,
)

__all__ = ["GPT", "MLP", "Attention", "Block", "KVCache", "LayerNorm", "add_bias", "causal_attention",
           "compute_dtype", "count_params", "init_cache", "next_key", "normal"]
