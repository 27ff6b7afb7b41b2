"""Bits per byte: summed nats / ln 2 / UTF-8 bytes of the text the evaluated targets decode to, any tokenizer."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gptjax import config
from gptjax.data import tokenizer as tokenizers
from gptjax.model import GPT
from gptjax.train import trainer
from gptjax.train.loop import eval_batch
from gptjax.train.tracking import read_metrics

# Multi-byte characters (2, 3 and 4 bytes in UTF-8) among ASCII, so bytes, characters and tokens all differ.
LINE = "Café au lait, naïve — déjà vu: 東京 in 🌸 spring; the quick brown fox jumps over the lazy dog {}.\n"


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("bpb") / "known.txt"
    path.write_text("".join(LINE.format(i) for i in range(400)), encoding="utf-8")
    return path


def tiny(text_file, tmp_path, tokenizer: str, *overrides: str) -> config.Config:
    return config.load("tiny", [f"data.source={text_file}", f"data.tokenizer={tokenizer}",
                                f"run.out_dir={tmp_path / tokenizer}", *overrides])


def decoded_bytes(cfg, ds, split: str) -> int:
    """The evaluated targets' text, decoded the tokenizer's own way (tiktoken's bytes for GPT-2), in bytes."""
    total = 0
    for i in range(cfg.train.eval_batches):
        for row in eval_batch(cfg, ds.split(split), i)[1]:
            if ds.tokenizer.kind == "gpt2":
                total += len(ds.tokenizer.enc.decode_bytes([t for t in row.tolist() if t != ds.tokenizer.eot_id]))
            else:
                total += len(ds.tokenizer.decode(row.tolist()).encode("utf-8"))
    return total


def n_tokens(cfg) -> int:
    return cfg.train.eval_batches * cfg.train.micro_batch_size * cfg.model.n_ctx


@pytest.mark.parametrize("tokenizer, n_vocab", [("char", None), ("gpt2", 50304)])
def test_a_uniform_predictor_scores_log2_v_bits_per_token(text_file, tmp_path, tokenizer, n_vocab):
    overrides = [f"model.n_vocab={n_vocab}"] if n_vocab else []
    cfg, ds, mesh = trainer.setup(tiny(text_file, tmp_path, tokenizer, *overrides))
    model = GPT(cfg.model, rngs=nnx.Rngs(0))
    model.wte_vd.value = jnp.zeros_like(model.wte_vd.value)  # tied: every logit 0, uniform over all V ids
    pieces = trainer.build(cfg, mesh)
    out = trainer.evaluate(cfg, ds, mesh, pieces.eval_step, nnx.state(model, nnx.Param))
    V = cfg.model.n_vocab
    for split in ("train", "val"):
        n_bytes = decoded_bytes(cfg, ds, split)
        assert n_bytes > n_tokens(cfg)  # multi-byte text: a token is more than a byte here, for both tokenizers
        assert out[f"{split}_loss"] == pytest.approx(math.log(V), rel=1e-5)  # float32 logsumexp
        assert out[f"{split}_bpb"] == pytest.approx(math.log2(V) * n_tokens(cfg) / n_bytes, rel=1e-5)


def test_char_and_bpe_runs_on_one_text_report_bpb_from_their_own_byte_counts(text_file, tmp_path):
    per_token_bytes = {}
    for tokenizer in ("char", "gpt2"):
        cfg = tiny(text_file, tmp_path, tokenizer, "train.steps=4", "train.eval_every=4", "model.n_embd=16",
                   "model.n_head=2", "model.n_layer=1")
        trainer.train(cfg)
        cfg, ds, _ = trainer.setup(cfg)
        last = read_metrics(tmp_path / tokenizer)[-1]
        for split, key in (("train", "eval_train"), ("val", "val")):
            n_bytes = decoded_bytes(cfg, ds, split)
            expected = last[f"{key}_loss"] * n_tokens(cfg) / math.log(2) / n_bytes
            assert last[f"{key}_bpb"] == pytest.approx(expected, rel=1e-9)
        per_token_bytes[tokenizer] = decoded_bytes(cfg, ds, "val") / n_tokens(cfg)
    # Each divides by its own text: about one byte per character token, several per GPT-2 token.
    assert 1.0 < per_token_bytes["char"] < 1.3 and per_token_bytes["gpt2"] > 2.0


def test_token_bytes_sum_to_the_decoded_text():
    gpt2 = tokenizers.GPT2Tokenizer()
    text = "Ünïcödé 🌸 splits into byte tokens; ASCII does not."
    ids = gpt2.encode(text)
    assert gpt2.token_bytes[ids].sum() == len(text.encode()) and gpt2.token_bytes[gpt2.eot_id] == 0
    char = tokenizers.CharTokenizer.fit(text)
    assert char.token_bytes[char.encode(text)].sum() == len(text.encode())
    ids_tok = tokenizers.IdsTokenizer(1000)
    assert ids_tok.token_bytes[[464, 3, 11]].sum() == len(ids_tok.decode([464, 3, 11]).encode())


def test_a_tokenizer_without_its_own_byte_table_is_measured_by_decoding():
    class Words:  # a kind that predates token_bytes: each id decoded alone
        vocab_size = 3

        def decode(self, ids):
            return "".join(["a", "é", "東"][i] for i in ids)

    assert np.array_equal(tokenizers.token_bytes(Words()), [1, 2, 3])
