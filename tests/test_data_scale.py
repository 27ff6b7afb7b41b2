"""Data at scale: every source kind gives one file's ids, memory stays bounded, a killed build never loads."""

import gzip
import json
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from gptjax import data
from gptjax.config import DataConfig
from gptjax.data import DataError, pipeline
from gptjax.data import tokenizer as tokenizers

from .conftest import ROOT, run_in_process

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "ROMEO", "speaks", "to", "JULIET", "of", "naïve", "cafés", "12", "34"]


def corpus(n_docs: int = 40, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    docs = [" ".join(rng.choice(WORDS, rng.integers(5, 200))) + rng.choice(["\n", ".\n\n", "  ", "!"])
            for _ in range(n_docs)]
    docs[7] = "\n".join(docs[:7]) * 10  # a document much longer than a chunk, cut into pieces
    return docs


def write_jsonl(path, docs, opener=open):
    with opener(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs))


def write_shards(folder, docs):
    """The same documents, in order, spread over every shard format."""
    folder.mkdir()
    write_jsonl(folder / "s0.jsonl", docs[:10])
    write_jsonl(folder / "s1.jsonl.gz", docs[10:20], opener=gzip.open)
    pq.write_table(pa.table({"text": docs[20:30]}), folder / "s2.parquet")
    (folder / "s3.txt").write_text(docs[30], encoding="utf-8")
    (folder / "s4.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(docs[31].encode()))
    with zstandard.open(folder / "s5.jsonl.zst", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": d}) + "\n" for d in docs[32:])


def splits(ds):
    return ds.train.tolist(), ds.val.tolist()


@pytest.mark.parametrize("tokenizer", ["gpt2", "char"])
def test_every_source_kind_gives_the_ids_of_one_file(tmp_path, tokenizer):
    docs = corpus()
    write_jsonl(tmp_path / "all.jsonl", docs)
    write_shards(tmp_path / "shards", docs)
    cache = str(tmp_path / "cache")
    # The reference: one file, default chunks, one process. The shards: small chunks over two processes.
    ref = data.prepare(DataConfig(source=str(tmp_path / "all.jsonl"), tokenizer=tokenizer, cache_dir=cache))
    names = ["s0.jsonl", "s1.jsonl.gz", "s2.parquet", "s3.txt", "s4.txt.zst", "s5.jsonl.zst"]
    for source in (tmp_path / "shards", f"{tmp_path}/shards/s*", ",".join(f"{tmp_path}/shards/{n}" for n in names)):
        ds = data.prepare(DataConfig(source=str(source), tokenizer=tokenizer, cache_dir=cache,
                                     num_proc=2, chunk_chars=1024))
        assert splits(ds) == splits(ref), source
        assert ds.meta["documents"] == len(docs)
    if tokenizer == "char":
        assert ref.tokenizer.chars == sorted(set("\n".join(docs)))


def test_hub_sources_stream_through_datasets(tmp_path):
    # load_dataset takes a local folder as it takes a hub name, so the streamed hf: path runs offline.
    docs = corpus()
    write_jsonl(tmp_path / "all.jsonl", docs)
    (tmp_path / "hub").mkdir()
    write_jsonl(tmp_path / "hub" / "train.jsonl", docs)
    cache = str(tmp_path / "cache")
    ref = data.prepare(DataConfig(source=str(tmp_path / "all.jsonl"), tokenizer="gpt2", cache_dir=cache))
    reports = []
    ds = data.prepare(DataConfig(source=f"hf:{tmp_path}/hub", tokenizer="gpt2", cache_dir=cache), progress=reports.append)
    assert splits(ds) == splits(ref)
    assert reports[-1].eta_s is None and "ETA unknown" not in reports[-1].line()  # "done": no size to go by


def test_validation_holds_whole_documents(tmp_path):
    docs = corpus(200, seed=1)
    write_jsonl(tmp_path / "all.jsonl", docs)
    reports = []
    ds = data.prepare(DataConfig(source=str(tmp_path / "all.jsonl"), tokenizer="gpt2", cache_dir=str(tmp_path / "c")),
                      progress=reports.append)
    assert (reports[-1].stage, reports[-1].docs, reports[-1].tokens) == ("done", len(docs), len(ds.train) + len(ds.val))
    assert "200 documents" in reports[-1].line() and "tokens/s" in reports[-1].line()
    held = pipeline.held_out(np.arange(len(docs)), 0.1)
    assert 5 < held.sum() < 40  # about a tenth of the documents
    eot = ds.tokenizer.eot_id
    for split, expected in ((ds.val, held), (ds.train, ~held)):
        ids = split.tolist()
        ends = [i for i, t in enumerate(ids) if t == eot]
        pieces = [ids[a + 1:b] for a, b in zip([-1, *ends], ends)]
        assert [ds.tokenizer.decode(p) for p in pieces] == [d for d, h in zip(docs, expected) if h]


def test_a_long_document_is_cut_where_the_ids_do_not_change():
    enc = tokenizers.gpt2_encoding()
    rng = np.random.default_rng(0)
    alphabet = ["a", "Bc", " ", "  ", "\n", "\n\n", "\t", "'s", "'", "12", ".", "é", "\u00a0", "\r\n", "日本", "!?"]
    texts = ["".join(corpus(12))] + ["".join(rng.choice(alphabet, 600)) for _ in range(30)]
    for text in texts:
        for limit in (50, 333, 1024):
            at = pipeline.bpe_cut(text, limit)
            assert 0 < at <= limit
            assert enc.encode_ordinary(text[:at]) + enc.encode_ordinary(text[at:]) == enc.encode_ordinary(text)


def test_nanogpt_bin_folder_is_used_where_it_lies(tmp_path):
    docs = corpus()
    write_jsonl(tmp_path / "all.jsonl", docs)
    ref = data.prepare(DataConfig(source=str(tmp_path / "all.jsonl"), tokenizer="gpt2", cache_dir=str(tmp_path / "c")))
    folder = tmp_path / "owt"
    folder.mkdir()
    np.asarray(ref.train, dtype=np.uint16).tofile(folder / "train.bin")
    np.asarray(ref.val, dtype=np.uint16).tofile(folder / "val.bin")
    ds = data.prepare(DataConfig(source=str(folder), tokenizer="gpt2", cache_dir=str(tmp_path / "c")))
    assert splits(ds) == splits(ref)
    assert ds.train.filename == str((folder / "train.bin").resolve())  # memory-mapped in place, not copied
    with pytest.raises(DataError, match="nanoGPT train.bin/val.bin folder of GPT-2 ids; set data.tokenizer=gpt2"):
        data.prepare(DataConfig(source=str(folder), cache_dir=str(tmp_path / "c")))
    np.array([1, 60000], dtype=np.uint16).tofile(folder / "val.bin")
    with pytest.raises(DataError, match="val.bin' holds token id 60000, outside GPT-2's vocabulary"):
        data.prepare(DataConfig(source=str(folder), tokenizer="gpt2", cache_dir=str(tmp_path / "c")))


def test_nanogpt_bin_folder_trains_and_samples(tmp_path):
    folder = tmp_path / "owt"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("train.bin", 4000), ("val.bin", 500)):
        rng.integers(0, 50257, n, dtype=np.uint16).tofile(folder / name)
    run = tmp_path / "run"
    trained = run_in_process("train.py", "tiny", f"run.out_dir={run}", f"data.source={folder}", "data.tokenizer=gpt2",
                             "train.steps=2", "train.eval_every=2")
    assert trained.returncode == 0, trained.stderr
    sampled = run_in_process("sample.py", str(run), "--max-new-tokens", "5", "--num-samples", "1")
    assert sampled.returncode == 0, sampled.stderr
    assert sampled.stdout.strip()


@pytest.mark.parametrize("bad", ["jsonl", "parquet"])
def test_a_row_that_is_not_text_names_the_file_and_row(tmp_path, bad):
    path = tmp_path / f"d.{bad}"
    rows = [{"text": "fine"}, {"text": "also fine"}, {"text": 1}] if bad == "jsonl" else None
    if rows:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pq.write_table(pa.table({"text": [3, 4]}), path)
    row = 2 if rows else 0
    with pytest.raises(DataError, match=f"dataset '{path}' row {row}: 'text' holds int .*, not text"):
        data.prepare(DataConfig(source=str(path), cache_dir=str(tmp_path / "c")))


def test_bad_shards_and_folders_get_one_line_naming_them(tmp_path):
    cfg = lambda source: DataConfig(source=str(source), cache_dir=str(tmp_path / "c"))  # noqa: E731
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is an empty folder; put .txt/.jsonl/.parquet shards in it"):
        data.prepare(cfg(tmp_path / "empty"))
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a.txt").write_text("hello")
    (folder / "b.csv").write_text("x")
    with pytest.raises(DataError, match=f"folder '{folder}' holds '{folder}/b.csv', of unsupported type '.csv'"):
        data.prepare(cfg(folder))
    (folder / "b.csv").unlink()
    (folder / "c.txt.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=f"cannot read shard '{folder}/c.txt.gz'"):
        data.prepare(cfg(folder))
    with pytest.raises(DataError, match="pattern .* matches no files"):
        data.prepare(cfg(tmp_path / "nothing*.jsonl"))
    assert not list((tmp_path / "c" / "data").iterdir())  # no cache entry from any refusal


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl.zst", ".txt.gz", ".txt.zst"])
def test_a_cut_compressed_shard_is_one_line_naming_it(tmp_path, suffix):
    path = tmp_path / f"d{suffix}"
    write_jsonl(path, corpus(), opener=gzip.open if suffix.endswith(".gz") else zstandard.open)
    path.write_bytes(path.read_bytes()[:300])  # a copy cut short
    with pytest.raises(DataError, match=f"'{path}'.*(damaged \\.(gz|zst) file|ended before the end).*; "
                                        f"replace or remove the file"):
        data.prepare(DataConfig(source=str(path), cache_dir=str(tmp_path / "c")))


PREPARE = """
import resource, sys
from gptjax import data
from gptjax.config import DataConfig
ds = data.prepare(DataConfig(source=sys.argv[1], cache_dir=sys.argv[2], tokenizer=sys.argv[3],
                             num_proc=int(sys.argv[4]), chunk_chars=1 << 18))
print(len(ds.train) + len(ds.val), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def prepare_in_subprocess(source, cache, tokenizer="char", num_proc=1, **kw):
    return subprocess.Popen([sys.executable, "-c", PREPARE, str(source), str(cache), tokenizer, str(num_proc)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_memory_does_not_grow_with_the_corpus(tmp_path):
    # One 48 MB document, streamed: were it held whole, as text (48 MB) or as ids (96 MB+),
    # peak RSS would grow by far more than the bound against a corpus a tenth its size.
    block = "".join(corpus(60)).encode()
    peaks = {}
    for n in (4, 40):
        path = tmp_path / f"c{n}.txt"
        with open(path, "wb") as f:
            for _ in range(n * (1 << 20) // len(block) + 1):
                f.write(block)
        out, err = prepare_in_subprocess(path, tmp_path / "cache").communicate(timeout=300)
        assert err == "" or "error" not in err, err
        tokens, peaks[n] = map(int, out.split())
        assert tokens >= 0.95 * (n << 20)  # chars: a few words are not ASCII
    assert peaks[40] - peaks[4] < 24, peaks  # MB


def test_a_killed_preparation_leaves_no_cache_that_loads(tmp_path):
    path = tmp_path / "big.txt"
    path.write_text("".join(corpus(400)) * 8)  # a few seconds of GPT-2 tokenization
    cache = tmp_path / "cache"
    proc = prepare_in_subprocess(path, cache, "gpt2", num_proc=2)
    deadline = time.time() + 120
    while not any(f.stat().st_size for f in (cache / "data").glob(".tmp-*/train.bin")) and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    workers = psutil.Process(proc.pid).children()
    assert len(workers) >= 2  # the pool, and multiprocessing's resource tracker
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive  # orphaned workers notice and exit
    assert list((cache / "data").glob(".tmp-*")) and not [p for p in (cache / "data").iterdir()
                                                          if not p.name.startswith(".")]
    ds = data.prepare(DataConfig(source=str(path), tokenizer="gpt2", cache_dir=str(cache)))
    assert [p.name.startswith(".") for p in (cache / "data").iterdir()] == [False]  # the stale scratch is gone
    enc = ds.tokenizer.enc
    assert ds.train.tolist() + ds.val.tolist() == enc.encode_ordinary(path.read_text()) + [enc.eot_token]
