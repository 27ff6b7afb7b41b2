""".jsonl shards are read line by line (gptjax.data.sources._json_lines), not through `datasets`: the same
documents as `datasets` gives for every valid file, and one line naming the shard and row for every bad one."""

import functools
import gzip
import io
import json

import pytest
import zstandard

from gptjax import data
from gptjax.config import DataConfig
from gptjax.data import DataError, sources

ROWS = [{"text": "First Citizen:\r\nBefore we proceed", "id": 1}, {"text": None}, {"other": "no text here"},
        {"text": ""}, {"text": "ünïcödé, 中文, emoji 🙂 and a lone \\ backslash"}, {"text": "\t  whitespace \n\n runs  "},
        {"text": "x" * 5000, "nested": {"a": [1, 2]}}, {"text": "last"}]


def write(path, lines: list[str]):
    opener = {".gz": gzip.open, ".zst": zstandard.open}.get(path.suffix, open)
    with opener(path, "wt", encoding="utf-8", newline="") as f:
        f.write("".join(lines))


def ours(path) -> list[str]:
    return ["".join(doc) for doc in sources.documents(sources.resolve(str(path)), "text", 1 << 20)]


def through_datasets(path) -> list[str]:
    rows = sources._rows(functools.partial(sources._local, path), "text", str(path), path)
    return ["".join(doc) for doc in rows]


@pytest.mark.parametrize("name, lines", [
    ("plain.jsonl", [json.dumps(r) + "\n" for r in ROWS]),
    ("ascii_escapes.jsonl", [json.dumps(r, ensure_ascii=True) + "\n" for r in ROWS]),
    ("raw_utf8_crlf_blank_lines.jsonl", ["\n"] + [json.dumps(r, ensure_ascii=False) + "\r\n\n" for r in ROWS]),
    ("no_final_newline.jsonl.gz", [json.dumps(r) + "\n" for r in ROWS][:-1] + [json.dumps(ROWS[-1])]),
    ("bom.jsonl.zst", ["\ufeff"] + [json.dumps(r) + "\n" for r in ROWS]),
])
def test_the_same_documents_as_datasets_reads(tmp_path, name, lines):
    path = tmp_path / name
    write(path, lines)
    assert ours(path) == through_datasets(path) == [r["text"] for r in ROWS if r.get("text")]


def test_lines_across_read_blocks():
    text = b'{"text": "a"}\n\n{"text": "bb"}\r\n' + b'{"text": "' + b"c" * 50 + b'"}'
    assert list(sources._lines(io.BytesIO(text), block=7)) == text.split(b"\n")


@pytest.mark.parametrize("content, message", [
    (b'{"text": "a"}\n{"text": "b\n', r"'{path}' \(at row 1\): not JSON: Unterminated string .*\(column 10\); replace"),
    (b'{"text": "a"} {"text": "b"}\n', r"'{path}' \(at row 0\): not JSON: Extra data"),
    (b'{"text": "a"}\n[1, 2]\n', r"'{path}' row 1 is a JSON list, not an object with a 'text' field; fix the row"),
    (b'{"text": "a\xff"}\n', r"'{path}' \(at row 0\): not UTF-8 text \(invalid start byte\); replace"),
    (b'{"text": "ok"}\n{"text": "\\ud800"}\n', r"'{path}' row 1: 'text' holds an unpaired surrogate escape"),
    (b'{"text": "ok"}\n{"text": 7}\n', r"'{path}' row 1: 'text' holds int '7', not text; fix the row"),
    (b'{"text": "ok"}\n' + b"[" * 100_000 + b"\n", r"'{path}' \(at row 1\): JSON nested too deeply"),
    (b'{"other": "a"}\n{"other": "b"}\n', r"'{path}' has no column 'text' \(columns: other\); set data.text_field"),
])
def test_a_bad_row_is_one_line_naming_the_shard_and_row(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message.format(path=path)) as e:
        ours(path)
    assert "\n" not in str(e.value)


def test_an_empty_shard_among_others_adds_nothing(tmp_path):
    # Through `datasets` an empty .jsonl failed the whole preparation with "StopIteration".
    folder = tmp_path / "shards"
    folder.mkdir()
    write(folder / "a.jsonl", [json.dumps({"text": "to be or not to be"}) + "\n"])
    (folder / "b.jsonl").write_bytes(b"")
    write(folder / "c.jsonl", [json.dumps({"text": "that is the question"}) + "\n"])
    ds = data.prepare(DataConfig(source=str(folder), tokenizer="gpt2", cache_dir=str(tmp_path / "cache")))
    text = ds.tokenizer.decode([t for t in [*ds.train, *ds.val] if t != ds.tokenizer.eot_id])
    assert text == "to be or not to bethat is the question"
