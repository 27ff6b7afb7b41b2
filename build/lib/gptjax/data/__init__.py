"""Data: sources tokenized once into cached token files, and batches as a pure function of (seed, step)."""

from gptjax.data.dataset import EVAL_STREAM, DataError, Dataset, check_fits, gather, prepare, vocab_size, window_starts

__all__ = ["EVAL_STREAM", "DataError", "Dataset", "check_fits", "gather", "prepare", "vocab_size",
           "window_starts"]
