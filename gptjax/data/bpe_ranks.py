"""Rank-consistent byte-level BPE: a tokenizer.json that tiktoken encodes exactly as Hugging Face `tokenizers` does.

tiktoken merges, inside each pre-token, the adjacent pair whose joined bytes have the lowest rank (id);
`tokenizers` merges the pair that comes first in its merges list. They agree when the merges list
holds, for every non-byte token t in id order, every split t = l + r whose halves are both tokens,
ordered by (id of t, id of l, id of r), and the model returns a pre-token that is itself a token
whole (`ignore_merges`, tiktoken's first lookup). That is the convention transformers uses to write a
tiktoken model (Llama 3) as tokenizer.json. With GPT-2's split (the ByteLevel pre-tokenizer's regex,
tiktoken's r50k pattern), no normalizer and the special tokens kept out of the text, the file and a
tiktoken Encoding of its vocabulary give the same ids on every text; tiktoken is the faster one
(GPT-2's regex split is `tokenizers`' slow part). `gptjax tokenizer train` writes files of this form.
"""

from __future__ import annotations

import functools

import tiktoken

from gptjax.data.tokenizer import GPT2_SPLIT

# Model fields whose value changes how text becomes tokens: anything but these values is another algorithm.
PLAIN_BPE = {"dropout": None, "unk_token": None, "continuing_subword_prefix": None, "end_of_word_suffix": None,
             "fuse_unk": False, "byte_fallback": False}
BYTE_LEVEL_SPLIT = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}


def complete_merges(vocab: dict[str, int], specials: set[str]) -> list[list[str]]:
    """Every split of every non-byte, non-special token into two tokens, by (id of the token, of its halves)."""
    splits = []
    for token, i in vocab.items():
        if token in specials:
            continue
        for k in range(1, len(token)):
            left, right = token[:k], token[k:]
            if left in vocab and right in vocab and left not in specials and right not in specials:
                splits.append((i, vocab[left], vocab[right], left, right))
    splits.sort()
    return [[left, right] for _, _, _, left, right in splits]


def make_rank_consistent(spec: dict) -> dict:
    """A byte-level BPE tokenizer.json (as `tokenizers` trains it) in the rank-consistent form: the same
    vocabulary, the complete merges list, ignore_merges. Deterministic: the same file gives the same file."""
    specials = {t["content"] for t in spec.get("added_tokens") or []}
    model = dict(spec["model"], ignore_merges=True, merges=complete_merges(spec["model"]["vocab"], specials))
    return dict(spec, model=model)


def _bytes_to_unicode() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the printable character standing for each byte, inverted."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


BYTE_OF = _bytes_to_unicode()
_cache: dict[str, tiktoken.Encoding | None] = {}


def encoding(spec: dict, digest: str) -> tiktoken.Encoding | None:
    """The tiktoken Encoding that tokenizes exactly as this tokenizer.json, or None when the file is not a
    rank-consistent byte-level BPE (then only `tokenizers` knows how it tokenizes). Checked once per content."""
    if digest not in _cache:
        if len(_cache) >= 8:
            _cache.pop(next(iter(_cache)))
        _cache[digest] = _build(spec)
    return _cache[digest]


def _build(spec: dict) -> tiktoken.Encoding | None:
    model = spec.get("model")
    added = spec.get("added_tokens") or []
    if not (isinstance(model, dict) and model.get("type") == "BPE" and model.get("ignore_merges") is True
            and all(model.get(k) == v for k, v in PLAIN_BPE.items()) and spec.get("normalizer") is None
            and _has(spec.get("pre_tokenizer"), BYTE_LEVEL_SPLIT) and _has(spec.get("decoder"), {"type": "ByteLevel"})
            and (spec.get("post_processor") is None or _has(spec["post_processor"], {"type": "ByteLevel"}))
            and all(t.get("special") is True for t in added)):  # a non-special added token is matched in text
        return None
    vocab, specials = model.get("vocab"), {t["content"]: t["id"] for t in added}
    ranks = _byte_ranks(vocab, specials)
    if ranks is None or set(ranks.values()) & set(specials.values()) or not _out_of_reach(specials):
        return None
    merges = [m.split(" ") if isinstance(m, str) else m for m in model.get("merges") or []]
    if merges != complete_merges(vocab, set(specials)):
        return None
    return tiktoken.Encoding(name="rank-consistent-bpe", pat_str=GPT2_SPLIT, mergeable_ranks=ranks,
                             special_tokens=specials)


def _has(section, fields: dict) -> bool:
    return isinstance(section, dict) and all(section.get(k) == v for k, v in fields.items())


def _byte_ranks(vocab: dict[str, int], specials: dict[str, int]) -> dict[bytes, int] | None:
    """Each non-special token's bytes -> its id; None unless every token is byte-level text, ids are
    distinct, and the 256 bytes are all tokens (so every text encodes)."""
    ranks = {}
    for token, i in vocab.items():
        if token in specials:
            if specials[token] != i:
                return None
            continue
        if not token or any(c not in BYTE_OF for c in token):
            return None
        ranks[bytes(BYTE_OF[c] for c in token)] = i
    if len(set(ranks.values())) != len(ranks) or any(bytes([b]) not in ranks for b in range(256)):
        return None
    return ranks


@functools.cache
def _split():
    from tokenizers import pre_tokenizers

    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _out_of_reach(specials: dict[str, int]) -> bool:
    """Whether no special token is a whole GPT-2 pre-token: one that is (a special "hello") would be found
    in the vocabulary by `tokenizers`' whole-word lookup, never by tiktoken, which keeps specials apart."""
    return all(len(_split().pre_tokenize_str(content)) != 1 for content in specials)
