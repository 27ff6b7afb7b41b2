"""The one-view inspect commands (params, next, attention, embeddings, lens) and the helpers every command shares."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gptjax import errors


class InspectError(errors.UserError):
    """A flag that does not fit the model (layer, head, token, count); the message says what does."""


def check_range(flag: str, value: int | None, size: int, what: str) -> list[int]:
    """[value], or every index when the flag is absent; out-of-range values are one clear error."""
    if value is None:
        return list(range(size))
    if not 0 <= value < size:
        raise InspectError(f"{flag} {value} does not exist: the model has {size} {what}, numbered 0 to {size - 1}")
    return [value]


# ---------------------------------------------------------------------------
# params


def model_config(args):
    """The model config to count: a run directory's, or a preset's with n_vocab resolved as training would."""
    from gptjax import config, data
    from gptjax.train import runs

    if args.config is None:  # the positional words are one run directory
        if len(args.targets) != 1:
            raise InspectError("params takes one run directory, or --config NAME [section.key=value ...]")
        return runs.load_config(args.targets[0]).model, f"run {args.targets[0]}"
    cfg = config.load(args.config, args.targets)
    if cfg.model.n_vocab is not None:
        return cfg.model, f"config {args.config}"
    model = cfg.resolve_vocab(data.vocab_size(cfg.data)).model
    return model, f"config {args.config} (n_vocab {model.n_vocab}: the data's vocabulary)"


def cmd_params(args) -> None:
    from gptjax.look import analysis, render
    from gptjax.model import abstract_model

    cfg, source = model_config(args)
    print(render.params_text(cfg, source, analysis.param_groups(abstract_model(cfg)), args.all_layers))


# ---------------------------------------------------------------------------
# next, attention, embeddings, lens: all read a trained run


def load_run(args):
    from gptjax.train import runs

    run = runs.load(args.run_dir, args.step)
    return run, run.model()


def encode_prompt(run, text: str) -> list[int]:
    from gptjax.look import analysis

    ids = analysis.prompt_ids(run.tokenizer, text, run.cfg.model.n_ctx)
    if not ids:
        raise InspectError("--prompt encodes to no tokens; give some text")
    if len(ids) == run.cfg.model.n_ctx and len(run.tokenizer.encode(text)) > len(ids):
        print(f"note: the prompt is longer than the context window; the model sees its last {len(ids)} tokens")
    return ids


def cmd_next(args) -> None:
    from gptjax.look import analysis, render

    if any(not t >= 0 for t in args.temperature):
        raise InspectError(f"--temperature must be >= 0 (0 is the argmax limit), got {args.temperature}")
    run, model = load_run(args)
    tok = run.tokenizer
    top = args.top or min(10, tok.vocab_size)
    if not 1 <= top <= tok.vocab_size:
        raise InspectError(f"--top must be between 1 and the vocabulary size {tok.vocab_size}, got {top}")
    ids = encode_prompt(run, args.prompt)
    logits_v = analysis.next_logits(model, ids, tok.vocab_size)
    probs = {t: analysis.softmax_at(logits_v, t) for t in args.temperature}
    print(render.next_table(tok, ids, logits_v, probs, analysis.top_tokens(logits_v, top)))


def cmd_attention(args) -> None:
    from gptjax.look import analysis, render

    out = args.out or str(Path(args.run_dir) / "attention.png")  # beside the run it shows, not in the cwd
    render.check_out(out)
    run, model = load_run(args)
    layers = check_range("--layer", args.layer, run.cfg.model.n_layer, "layers")
    heads = check_range("--head", args.head, run.cfg.model.n_head, "heads")
    ids = encode_prompt(run, args.prompt)
    attn_lhts = analysis.attention_maps(model, ids)
    tokens = [run.tokenizer.decode([i]) for i in ids]
    render.attention_png(attn_lhts, tokens, layers, heads, out)
    print(f"wrote {out}: attention over {len(ids)} tokens, "
          f"{fmt_list('layer', layers)} x {fmt_list('head', heads)} "
          f"(rows: queries, columns: the keys they attend to)")


def fmt_list(what: str, xs: list[int]) -> str:
    return f"{what} {xs[0]}" if len(xs) == 1 else f"{what}s {xs[0]}-{xs[-1]}"


def word_ids(tok, flag: str, word: str) -> list[int]:
    """A word's token ids; a word of several tokens is said so, and stands for the mean of their embeddings."""
    from gptjax.look import render

    if not word:
        raise InspectError(f"{flag} needs a non-empty token")
    try:
        ids = tok.encode(word)
    except errors.UserError as e:
        raise InspectError(f"{flag} {word!r}: {e}") from None
    if len(ids) > 1:
        pieces = ", ".join(render.show(tok.decode([i])) for i in ids)
        print(f"note: {render.show(word)} is {len(ids)} tokens ({pieces}); it stands for the mean of their embeddings")
    return ids


def cmd_embeddings(args) -> None:
    from gptjax.look import analysis, render

    if (args.nearest is None) == (args.analogy is None):
        raise InspectError("embeddings takes --nearest TOKEN or --analogy A B C (one of the two)")
    run, model = load_run(args)
    tok = run.tokenizer
    k = args.k or min(10, tok.vocab_size - 1)
    if not 1 <= k < tok.vocab_size:
        raise InspectError(f"--k must be between 1 and {tok.vocab_size - 1}, got {k}")
    w_vd = np.asarray(model.wte_vd[...])[:tok.vocab_size]  # padded rows are never tokens
    if args.nearest is not None:
        ids = word_ids(tok, "--nearest", args.nearest)
        found = analysis.cosine_nearest(w_vd, analysis.word_vector(w_vd, ids), k, exclude=ids)
        title = render.show(args.nearest)
        left_out = f"the token{'s' if len(ids) > 1 else ''} of {render.show(args.nearest)}"
    else:
        a, b, c = (word_ids(tok, "--analogy", w) for w in args.analogy)
        found = analysis.analogy(w_vd, a, b, c, k)
        names = [render.show(w) for w in args.analogy]
        title, left_out = f"{names[0]} - {names[1]} + {names[2]}", f"the tokens of {', '.join(names)}"
    print(f"tokens nearest to {title} by cosine similarity in the token embedding W_E ({left_out} left out):")
    print(render.table(["rank", "token", "id", "cosine"],
                       [[r + 1, render.show(tok.decode([i])), i, f"{sim:.3f}"] for r, (i, sim) in enumerate(found)],
                       right={2, 3}))


def cmd_lens(args) -> None:
    from gptjax.look import analysis, render

    if args.out:
        render.check_out(args.out)
    run, model = load_run(args)
    tok = run.tokenizer
    ids = encode_prompt(run, args.prompt)
    probs_ltv = analysis.softmax_at(analysis.logit_lens(model, ids)[..., :tok.vocab_size], 1.0)
    top_lt, prob_lt = probs_ltv.argmax(-1), probs_ltv.max(-1)
    stages = ["embed", *(f"layer {i}" for i in range(run.cfg.model.n_layer))]
    print(render.lens_table(tok, ids, top_lt, prob_lt, stages))
    if args.out:
        vocab = [tok.decode([i]) for i in range(tok.vocab_size)]
        render.lens_png(top_lt, prob_lt, [vocab[i] for i in ids], vocab, stages, ids[1:], args.out)
        print(f"wrote {args.out}")


# ---------------------------------------------------------------------------
# The command line
