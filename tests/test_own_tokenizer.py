"""Your own tokenizer: `gptjax tokenizer train/eval`, and data.tokenizer=tokenizer.json everywhere (real `tokenizers`)."""

import dataclasses
import json
from collections import Counter

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from gptjax import config
from gptjax.config import DataConfig
from gptjax.data import dataset, sources, tokenizer_cli, tokenizer_train
from gptjax.data import tokenizer as tokenizers
from gptjax.data.tokenizer import TokenizerError
from tests.conftest import run_in_process, run_main

PLAY = (tokenizers.ASSETS / "tinyshakespeare.txt").read_text(encoding="utf-8")
HARD = ["naïve café — 日本語 🙂 👩‍👩‍👧 🇫🇷", "   spaces\t\ttabs\n\n\n\r\n  \u00a0nbsp  ", "", " ",
        "<|endoftext|> as text", "\x00\x01\x7f control \ufffd replacement \ufeff BOM", "e\u0301 combining, ﬁ ligature",
        "עברית ومرحبا RTL", "a" * 500, "\U0010ffff max code point", "}{][)(", "'s 've 're 12345 3.14"]


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    """A 400-token BPE of the play's first 200k characters, as `gptjax tokenizer train` writes it."""
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    path.write_text(tokenizer_train.train_bpe(iter([PLAY[:100_000], PLAY[100_000:200_000]]), 400))
    return path


def test_training_is_deterministic_and_has_an_end_of_text_token(bpe):
    again = tokenizer_train.train_bpe(iter([PLAY[:100_000], PLAY[100_000:200_000]]), 400)
    assert again == bpe.read_text()  # byte for byte
    tok = tokenizers.load(bpe)
    assert (tok.kind, tok.vocab_size, tok.eot_id, tok.bos_ids) == ("hf", 400, 0, [0])
    assert tok.decode([tok.eot_id]) == "<|endoftext|>"


def test_training_counts_the_words_of_the_whole_text_whatever_the_pieces():
    """The trainer is fed small pieces (faster), cut only where the pre-tokenizer splits anyway: the same
    words are counted, so the same file is learnt, as from the whole text at once."""
    text = PLAY[:20_000] + "x" * 300 + " a\n \n\n  b \u0085c\u00a0 d\t\n" * 20 + "=" * 200 + "\n" + PLAY[-5000:]
    split = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True).pre_tokenize_str
    pieces = list(tokenizer_train.small_pieces([text], size=64))
    assert "".join(pieces) == text and len(pieces) > 300 and max(map(len, pieces)) > 300  # the run of x: whole
    assert Counter(p for piece in pieces for p, _ in split(piece)) == Counter(p for p, _ in split(text))


@pytest.mark.parametrize("text", HARD + [PLAY[-3000:]])
def test_round_trip_and_byte_lengths(bpe, text):
    for tok in (tokenizers.load(bpe), tokenizers.GPT2Tokenizer(), tokenizers.CharTokenizer.fit(text + "x")):
        assert tok.decode(tok.encode(text)) == text
    # bits per byte divides by these: the bytes behind the ids are the text's UTF-8 bytes
    tok = tokenizers.load(bpe)
    assert int(tok.token_bytes[np.asarray(tok.encode(text), dtype=np.int64)].sum()) == len(text.encode())
    assert tok.token_bytes[tok.eot_id] == 0


def test_end_of_text_in_a_document_is_text_not_control(bpe):
    tok = tokenizers.load(bpe)
    assert tok.eot_id not in tok.encode("<|endoftext|>")


def _other_kind(model, trainer, tmp_path):
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([PLAY[:20_000]], trainer)
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return path


def test_wordpiece_is_refused_in_one_line_and_unigram_is_used(tmp_path):
    wordpiece = _other_kind(models.WordPiece(unk_token="[UNK]"), trainers.WordPieceTrainer(
        vocab_size=300, special_tokens=["[UNK]"], show_progress=False), tmp_path)
    with pytest.raises(TokenizerError, match=r"cannot be used: it is a WordPiece tokenizer, which decodes with spaces"):
        tokenizers.load(wordpiece)
    r = run_in_process("train.py", "tiny", f"data.tokenizer={wordpiece}", f"run.out_dir={tmp_path / 'run'}")
    assert (r.returncode, r.stderr.count("\n")) == (2, 1) and "WordPiece" in r.stderr
    assert not (tmp_path / "run").exists()
    unigram = _other_kind(models.Unigram(), trainers.UnigramTrainer(vocab_size=300, show_progress=False,
                                                                    special_tokens=["</s>"]), tmp_path)
    tok = tokenizers.load(unigram)
    assert tok.eot_id == 0 and tok.vocab_size <= 300
    ids = tok.encode("ROMEO and JULIET")
    assert ids and all(0 <= i < tok.vocab_size for i in ids)


@pytest.mark.parametrize("damage", [b'{"model": {"type": "BPE", "vocab": 7}}', b'{"model": 1',
                                    b'{"version": "1.0", "model": null}'])
def test_damaged_tokenizer_json_is_one_line(tmp_path, damage):
    (tmp_path / "tokenizer.json").write_bytes(damage)
    with pytest.raises(TokenizerError) as e:
        tokenizers.load_path(str(tmp_path))
    assert str(tmp_path / "tokenizer.json") in str(e.value) and "\n" not in str(e.value)


def test_preparation_matches_encode_and_is_keyed_by_content(bpe, tmp_path):
    docs = [PLAY[i * 3000:(i + 1) * 3000] for i in range(40)]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    cfg = DataConfig(source=str(tmp_path / "docs.jsonl"), tokenizer=str(bpe), cache_dir=str(tmp_path / "c"),
                     chunk_chars=1024, num_proc=1)
    ds = dataset.prepare(cfg)
    tok = tokenizers.load(bpe)
    every = [i for d in docs for i in [*tok.encode(d), tok.eot_id]]
    assert len(ds.train) + len(ds.val) == len(every) and ds.vocab_size == dataset.vocab_size(cfg) == 400
    assert ds.meta["tokenizer"] == json.loads(bpe.read_text())
    # the same content under another path shares the cache; an edited file gets its own
    (tmp_path / "copy.json").write_text(bpe.read_text())
    assert dataset.prepare(dataclasses.replace(cfg, tokenizer=str(tmp_path / "copy.json"))).meta == ds.meta
    (tmp_path / "copy.json").write_text(tokenizer_train.train_bpe(iter([PLAY[:50_000]]), 300))
    other = dataset.prepare(dataclasses.replace(cfg, tokenizer=str(tmp_path / "copy.json")))
    assert other.vocab_size == 300
    assert len(list((tmp_path / "c" / "data").iterdir())) == 2


@pytest.mark.slow  # spawns the preparation's worker processes
def test_parallel_preparation_gives_the_same_tokens(bpe, tmp_path):
    (tmp_path / "play.txt").write_text(PLAY[:300_000])
    one, two = (dataset.prepare(DataConfig(source=str(tmp_path / "play.txt"), tokenizer=str(bpe), num_proc=n,
                                           chunk_chars=16_384, cache_dir=str(tmp_path / f"c{n}"))) for n in (1, 2))
    assert np.array_equal(one.train, two.train) and np.array_equal(one.val, two.val)
    # cut between chunks where the pre-tokenizer splits anyway: the same ids as the whole text at once
    whole = tokenizers.load(bpe).encode(PLAY[:300_000]) + [0]
    assert np.array_equal(np.concatenate([one.train, one.val]), whole)


def test_train_command_writes_the_file_and_refuses_bad_input(tmp_path):
    (tmp_path / "a.txt").write_text(PLAY[:60_000])
    out = tmp_path / "tok"
    r = run_main(tokenizer_cli.main, ["train", str(tmp_path / "a.txt"), "--vocab-size", "300", "--out", str(out)])
    assert r.returncode == 0, r.stderr
    assert f"wrote {out / 'tokenizer.json'}: vocabulary 300" in r.stderr
    assert tokenizers.load_path(str(out)).vocab_size == 300
    again = run_main(tokenizer_cli.main, ["train", str(tmp_path / "a.txt"), "--vocab-size", "300", "--out",
                                          str(tmp_path / "again")])
    assert again.returncode == 0 and (tmp_path / "again" / "tokenizer.json").read_bytes() == \
        (out / "tokenizer.json").read_bytes()  # deterministic: the same file, byte for byte
    bad = run_main(tokenizer_cli.main, ["train", str(tmp_path / "a.txt"), "--vocab-size", "100", "--out",
                                        str(tmp_path / "no")])
    assert (bad.returncode, bad.stderr.count("\n")) == (2, 1) and "--vocab-size must be at least 257" in bad.stderr
    missing = run_main(tokenizer_cli.main, ["train", str(tmp_path / "b.txt"), "--vocab-size", "300", "--out",
                                            str(tmp_path / "no")])
    assert missing.returncode == 2 and "not found" in missing.stderr
    assert not (tmp_path / "no").exists()


def test_train_text_never_holds_the_validation_tail():
    cfg = DataConfig()
    src = sources.resolve("shakespeare")
    train = "".join(tokenizer_train.texts(src, cfg, "train"))
    val = "".join(tokenizer_train.texts(src, cfg, "val"))
    assert train + val == PLAY and len(val) == pytest.approx(0.1 * len(PLAY), abs=2)


def test_eval_command_prints_the_table(bpe):
    r = run_main(tokenizer_cli.main, ["eval", str(bpe), "--source", "shakespeare"])
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines()[3:]}
    assert set(rows) == {"char", "gpt2", str(bpe)}
    assert float(rows["char"][3]) == 1.0 and 1.5 < float(rows[str(bpe)][3]) < float(rows["gpt2"][3])


def test_a_run_trains_samples_and_refuses_another_tokenizer_file_on_resume(tmp_path):
    tok_path = tmp_path / "tok.json"
    tok_path.write_text(tokenizer_train.train_bpe(iter([PLAY[:200_000]]), 300))
    args = ["tiny", f"data.tokenizer={tok_path}", f"run.out_dir={tmp_path / 'run'}", "train.steps=2",
            "train.eval_every=2"]
    assert run_in_process("train.py", *args).returncode == 0
    assert json.loads((tmp_path / "run" / "tokenizer.json").read_text()) == json.loads(tok_path.read_text())
    assert config.load(str(tmp_path / "run" / "config.yaml"), []).model.n_vocab == 300
    s = run_in_process("sample.py", tmp_path / "run", "--prompt", "ROMEO:", "--max-new-tokens", "5")
    assert s.returncode == 0 and s.stdout.startswith("ROMEO:")
    tok_path.write_text(tokenizer_train.train_bpe(iter([PLAY[:100_000]]), 300))  # same size, other merges
    again = run_in_process("train.py", *args[:3], "train.steps=4", "train.eval_every=2")
    assert again.returncode == 2 and "was trained with another tokenizer" in again.stderr


def test_init_from_refuses_data_tokenized_with_another_file(bpe):
    from gptjax.config import ConfigError, ModelConfig
    from gptjax.train.finetune import Source

    mine = tokenizers.load(bpe)
    source = Source("runs/a", ModelConfig(), mine, load=None)
    source.check_tokenizer(tokenizers.load(bpe))  # the same file: accepted
    other = tokenizers.from_json(json.loads(tokenizer_train.train_bpe(iter([PLAY[:50_000]]), 400)))
    with pytest.raises(ConfigError, match=r"with a different tokenizer.json, .* set data.tokenizer=runs/a/tokenizer"):
        source.check_tokenizer(other)
    with pytest.raises(ConfigError, match="trained with a Hugging Face tokenizer.json, but the data uses char"):
        source.check_tokenizer(tokenizers.CharTokenizer.fit(PLAY))
