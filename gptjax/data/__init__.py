"""Data: sources tokenized once into cached token files, and batches as a pure function of (seed, step)."""

from gptjax.data.dataset import EVAL_STREAM, Dataset, check_fits, gather, prepare, vocab_size, window_starts
from gptjax.data.pipeline import Progress
from gptjax.data.sources import DataError

__all__ = ["EVAL_STREAM", "DataError", "Dataset", "Progress", "check_fits", "gather", "prepare", "vocab_size",
           "window_starts"]
