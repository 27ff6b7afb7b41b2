"""Data: sources through `datasets`, the token cache, deterministic batches, clear errors."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gptjax import data
from gptjax.config import DataConfig
from gptjax.data import DataError

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 40


def test_shakespeare_is_built_in_and_char_level():
    ds = data.prepare(DataConfig())
    assert ds.vocab_size == 65
    assert ds.train.dtype == np.uint16
    assert len(ds.train) + len(ds.val) == 1_115_394
    assert ds.tokenizer.decode(ds.train[:14]) == "First Citizen:"


def test_gpt2_tokens_of_shakespeare():
    ds = data.prepare(DataConfig(tokenizer="gpt2"))
    assert ds.vocab_size == 50257
    assert ds.tokenizer.decode(ds.train[:3]) == "First Citizen:"
    assert ds.val[-1] == 50256  # each document ends with <|endoftext|>


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".parquet"])
def test_local_files_load_through_datasets(tmp_path, suffix):
    path = tmp_path / f"corpus{suffix}"
    docs = [TEXT[:1000], TEXT[1000:]]
    if suffix == ".txt":
        path.write_text("".join(docs))
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs)))
    else:
        pq.write_table(pa.table({"text": docs}), path)
    ds = data.prepare(DataConfig(source=str(path), tokenizer="gpt2", cache_dir=str(tmp_path / "cache")))
    tokens = np.concatenate([ds.train, ds.val]).tolist()
    eot = ds.tokenizer.eot_id
    assert ds.tokenizer.decode([t for t in tokens if t != eot]) == "".join(docs)
    assert tokens.count(eot) == (1 if suffix == ".txt" else 2)


def test_tokens_are_cached_and_reused(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text(TEXT)
    cfg = DataConfig(source=str(path), cache_dir=str(tmp_path / "cache"))
    first = data.prepare(cfg)
    folders = list((tmp_path / "cache" / "data").iterdir())
    assert len(folders) == 1
    mtime = (folders[0] / "train.bin").stat().st_mtime_ns
    again = data.prepare(cfg)
    assert (folders[0] / "train.bin").stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(first.train, again.train)
    path.write_text(TEXT + "more")  # new content, new cache entry
    data.prepare(cfg)
    assert len(list((tmp_path / "cache" / "data").iterdir())) == 2


def test_batches_are_a_pure_function_of_seed_and_step():
    tokens = np.arange(1000, dtype=np.uint16)
    a = data.window_starts(len(tokens), seed=1, step=5, batch_size=8, n_ctx=16)
    np.testing.assert_array_equal(a, data.window_starts(len(tokens), seed=1, step=5, batch_size=8, n_ctx=16))
    assert not np.array_equal(a, data.window_starts(len(tokens), seed=1, step=6, batch_size=8, n_ctx=16))
    x, y = data.gather(tokens, a.reshape(2, 4), 16)
    assert x.shape == y.shape == (2, 4, 16) and x.dtype == np.int32
    np.testing.assert_array_equal(y[..., :-1], x[..., 1:])  # targets are the next tokens
    assert (a + 16 < len(tokens)).all()


# Missing, empty, non-UTF-8 and too-short datasets are in tests/test_bad_input.py, through the CLI.


def test_missing_column_and_unsupported_type(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"body": "hello"}) + "\n")
    with pytest.raises(DataError, match="no column 'text' .*set data.text_field"):
        data.prepare(DataConfig(source=str(path), cache_dir=str(tmp_path / "c")))
    assert data.prepare(DataConfig(source=str(path), text_field="body", cache_dir=str(tmp_path / "c"))).vocab_size == 4
    (tmp_path / "d.csv").write_text("text\nhi\n")
    with pytest.raises(DataError, match="unsupported type '.csv'"):
        data.prepare(DataConfig(source=str(tmp_path / "d.csv")))
