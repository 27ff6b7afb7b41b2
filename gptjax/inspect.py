"""Look inside a model: python -m gptjax.inspect {params,next,attention,embeddings,lens} ...

The command line over gptjax/analysis.py: parse flags, load the run, print tables and
save pictures (gptjax/plots.py). Every mistake is one `error:` line and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import numpy as np

from gptjax import errors

EPILOG = """examples:
  python -m gptjax.inspect params --config gpt3
  python -m gptjax.inspect next runs/shakespeare_char_cpu --prompt "ROMEO:" --temperature 0 0.5 1 2
  python -m gptjax.inspect attention runs/shakespeare_char_cpu --prompt "To be, or not" --out attention.png
  python -m gptjax.inspect embeddings runs/shakespeare_char_cpu --analogy A a b
  python -m gptjax.inspect lens runs/shakespeare_char_cpu --prompt "ROMEO:" --out lens.png"""


class InspectError(errors.UserError):
    """A flag that does not fit the model (layer, head, token, count); the message says what does."""


def show(text: str) -> str:
    """A token as a quoted literal, so spaces and newlines stay visible: ' the', '\\n'."""
    return repr(text)


def table(headers: list[str], rows: list[list], right: set[int] = frozenset()) -> str:
    """A plain-text table: columns padded to their widest cell; columns in `right` right-aligned."""
    cells = [[str(c) for c in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    fmt = lambda row: "  ".join(c.rjust(w) if i in right else c.ljust(w)
                                for i, (c, w) in enumerate(zip(row, widths))).rstrip()
    return "\n".join(fmt(row) for row in cells)


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
    from gptjax import config, runs, tokenizer

    if args.config is None:  # the positional words are one run directory
        if len(args.targets) != 1:
            raise InspectError("params takes one run directory, or --config NAME [section.key=value ...]")
        return runs.load_config(args.targets[0]).model, f"run {args.targets[0]}"
    cfg = config.load(args.config, args.targets)
    if cfg.model.n_vocab is not None:
        return cfg.model, f"config {args.config}"
    if cfg.data.tokenizer == "gpt2":
        vocab, why = tokenizer.GPT2Tokenizer().vocab_size, "the GPT-2 BPE vocabulary"
    elif cfg.data.source == "shakespeare":
        text = (tokenizer.ASSETS / "tinyshakespeare.txt").read_text(encoding="utf-8")
        vocab, why = tokenizer.CharTokenizer.fit(text).vocab_size, "the characters of the built-in Shakespeare"
    else:
        raise InspectError(f"config {args.config} takes n_vocab from the characters of {cfg.data.source}; "
                           f"add model.n_vocab=N, or give a run directory trained on it")
    return dataclasses.replace(cfg.model, n_vocab=vocab), f"config {args.config} (n_vocab {vocab}: {why})"


def shape_text(shapes) -> str:
    return " + ".join(" x ".join(map(str, s)) for s in shapes)


def params_rows(groups, total: int, all_layers: bool) -> list[list]:
    """Table rows: every group with its share, a total per layer, all layers, and the grand total.
    Identical layers are shown once unless `all_layers` (GPT-3 would take 800 rows)."""
    from gptjax.analysis import layer_totals

    share = lambda n: f"{100 * n / total:.2f}%"
    per_layer = layer_totals(groups)
    layout = {layer: [(g.name, g.shapes) for g in groups if g.layer == layer] for layer in per_layer}
    collapse = not all_layers and len(per_layer) > 1 and all(v == layout[0] for v in layout.values())
    rows = []
    for g in groups:
        shown = g.layer is None or not collapse or g.layer == 0
        if shown:
            label = g.name if g.layer is None else f"layer {g.layer}: {g.name}"
            count = f"{g.count:,}" if g.count else "0 (shares W_E)"
            rows.append([label, shape_text(g.shapes), count, share(g.count) if g.count else "-"])
        if g.layer is None or g.name != layout[g.layer][-1][0]:
            continue
        if shown:  # the layer's last group: close the layer with its total
            rows.append([f"layer {g.layer} total", "", f"{per_layer[g.layer]:,}", share(per_layer[g.layer])])
        if g.layer == max(per_layer):
            n, blocks = len(per_layer), sum(per_layer.values())
            if collapse:
                rows.append([f"layers 1-{n - 1}: each the same as layer 0", "", f"{per_layer[0]:,} each", ""])
            rows.append([f"all {n} layers", "", f"{blocks:,}", share(blocks)])
    rows.append(["total", "", f"{total:,}", share(total)])
    return rows


def cmd_params(args) -> None:
    from gptjax import analysis

    cfg, source = model_config(args)
    groups = analysis.param_groups(analysis.abstract_model(cfg))
    total = sum(g.count for g in groups)
    print(f"{source}: {cfg.n_layer} layers, {cfg.n_head} heads of size {cfg.head_dim}, n_embd {cfg.n_embd}, "
          f"n_ctx {cfg.n_ctx}, n_vocab {cfg.n_vocab}, biases {'on' if cfg.bias else 'off'}")
    print(table(["group", "shape", "count", "share"], params_rows(groups, total, args.all_layers), right={2, 3}))
    print(f"{total:,} parameters ({total / 1e9:.1f}B)" if total >= 1e9 else f"{total:,} parameters ({total / 1e6:.1f}M)")


# ---------------------------------------------------------------------------
# next, attention, embeddings, lens: all read a trained run


def load_run(args):
    from gptjax import runs

    run = runs.load(args.run_dir, args.step)
    return run, run.model()


def encode_prompt(run, text: str) -> list[int]:
    from gptjax import analysis

    ids = analysis.prompt_ids(run.tokenizer, text, run.cfg.model.n_ctx)
    if not ids:
        raise InspectError("--prompt encodes to no tokens; give some text")
    return ids


def cmd_next(args) -> None:
    from gptjax import analysis

    run, model = load_run(args)
    tok = run.tokenizer
    if any(not t >= 0 for t in args.temperature):
        raise InspectError(f"--temperature must be >= 0 (0 is the argmax limit), got {args.temperature}")
    if not 1 <= args.top <= tok.vocab_size:
        raise InspectError(f"--top must be between 1 and the vocabulary size {tok.vocab_size}, got {args.top}")
    ids = encode_prompt(run, args.prompt)
    logits_v = analysis.next_logits(model, ids, tok.vocab_size)
    probs = {t: analysis.softmax_at(logits_v, t) for t in args.temperature}
    top = analysis.top_tokens(logits_v, args.top)
    print(f"after {show(tok.decode(ids))} ({len(ids)} tokens), the {args.top} most likely next tokens:")
    rows = [[rank + 1, show(tok.decode([i])), i, f"{logits_v[i]:.3f}", *(f"{p[i]:.4f}" for p in probs.values())]
            for rank, i in enumerate(top)]
    rows.append(["", f"top-{args.top} mass", "", "", *(f"{p[top].sum():.4f}" for p in probs.values())])
    headers = ["rank", "token", "id", "logit", *(f"p(T={t:g})" for t in args.temperature)]
    print(table(headers, rows, right=set(range(2, len(headers)))))


def cmd_attention(args) -> None:
    from gptjax import analysis, plots

    plots.check_out(args.out)
    run, model = load_run(args)
    layers = check_range("--layer", args.layer, run.cfg.model.n_layer, "layers")
    heads = check_range("--head", args.head, run.cfg.model.n_head, "heads")
    ids = encode_prompt(run, args.prompt)
    attn_lhts = analysis.attention_maps(model, ids)
    tokens = [run.tokenizer.decode([i]) for i in ids]
    plots.attention_grid(attn_lhts, tokens, layers, heads, args.out)
    print(f"wrote {args.out}: attention over {len(ids)} tokens, {fmt_list('layer', layers)} x {fmt_list('head', heads)} "
          f"(rows: queries, columns: the keys they attend to)")


def fmt_list(what: str, xs: list[int]) -> str:
    return f"{what} {xs[0]}" if len(xs) == 1 else f"{what}s {xs[0]}-{xs[-1]}"


def word_ids(tok, flag: str, word: str) -> list[int]:
    """A word's token ids; a word of several tokens is said so, and stands for the mean of their embeddings."""
    if not word:
        raise InspectError(f"{flag} needs a non-empty token")
    try:
        ids = tok.encode(word)
    except errors.UserError as e:
        raise InspectError(f"{flag} {word!r}: {e}") from None
    if len(ids) > 1:
        pieces = ", ".join(show(tok.decode([i])) for i in ids)
        print(f"note: {show(word)} is {len(ids)} tokens ({pieces}); it stands for the mean of their embeddings")
    return ids


def cmd_embeddings(args) -> None:
    from gptjax import analysis

    if (args.nearest is None) == (args.analogy is None):
        raise InspectError("embeddings takes --nearest TOKEN or --analogy A B C (one of the two)")
    run, model = load_run(args)
    tok = run.tokenizer
    if not 1 <= args.k < tok.vocab_size:
        raise InspectError(f"--k must be between 1 and {tok.vocab_size - 1}, got {args.k}")
    w_vd = np.asarray(model.wte_vd[...])[:tok.vocab_size]  # padded rows are never tokens
    if args.nearest is not None:
        ids = word_ids(tok, "--nearest", args.nearest)
        found = analysis.cosine_nearest(w_vd, analysis.word_vector(w_vd, ids), args.k, exclude=ids)
        print(f"nearest to {show(args.nearest)} by cosine similarity of token embeddings "
              f"(the token{'s' if len(ids) > 1 else ''} of {show(args.nearest)} left out):")
    else:
        a, b, c = (word_ids(tok, "--analogy", w) for w in args.analogy)
        found = analysis.analogy(w_vd, a, b, c, args.k)
        names = [show(w) for w in args.analogy]
        print(f"{names[0]} - {names[1]} + {names[2]}: nearest by cosine similarity of token embeddings "
              f"(the tokens of {', '.join(names)} left out):")
    rows = [[rank + 1, show(tok.decode([i])), i, f"{sim:.3f}"] for rank, (i, sim) in enumerate(found)]
    print(table(["rank", "token", "id", "cosine"], rows, right={2, 3}))


def cmd_lens(args) -> None:
    from gptjax import analysis, plots

    if args.out:
        plots.check_out(args.out)
    run, model = load_run(args)
    tok = run.tokenizer
    ids = encode_prompt(run, args.prompt)
    probs_ltv = analysis.softmax_at(analysis.logit_lens(model, ids)[..., :tok.vocab_size], 1.0)
    top_lt = probs_ltv.argmax(-1)
    stages = ["embed", *(f"layer {i}" for i in range(run.cfg.model.n_layer))]
    print(f"logit lens: the top next token (and its probability) read off the residual stream after each stage, "
          f"through ln_f and W_U; * marks the prompt's actual next token")
    rows = []
    for t, i in enumerate(ids):
        actual = ids[t + 1] if t + 1 < len(ids) else None
        cells = [f"{show(tok.decode([top_lt[l, t]]))} {probs_ltv[l, t, top_lt[l, t]]:.2f}"
                 + ("*" if top_lt[l, t] == actual else "") for l in range(len(stages))]
        rows.append([t, show(tok.decode([i])), *cells])
    print(table(["pos", "token", *stages], rows))
    if args.out:
        plots.logit_lens(top_lt, probs_ltv.max(-1), [tok.decode([i]) for i in ids],
                         [tok.decode([i]) for i in range(tok.vocab_size)], stages, ids[1:], args.out)
        print(f"wrote {args.out}")


# ---------------------------------------------------------------------------
# The command line


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gptjax.inspect", description=__doc__.splitlines()[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, run_dir: bool = True):
        c = sub.add_parser(name, help=help, description=help)
        if run_dir:
            c.add_argument("run_dir", help="a run directory written by train.py")
            c.add_argument("--step", default="latest", help="checkpoint: latest, best, or a step number")
        c.add_argument("--debug", action="store_true", help="show full tracebacks")
        c.set_defaults(func=globals()[f"cmd_{name}"])
        return c

    c = command("params", "every weight group with its shape, count and share; totals per layer and overall",
                run_dir=False)
    c.add_argument("targets", nargs="*", metavar="RUN_DIR | section.key=value",
                   help="a run directory; or, with --config, overrides such as model.n_layer=6")
    c.add_argument("--config", help="a preset name or config file instead of a run (e.g. gpt2, gpt3)")
    c.add_argument("--all-layers", action="store_true", help="list every layer, even when all are the same")
    c = command("next", "the top-N next tokens with logits and probabilities at each temperature")
    c.add_argument("--prompt", default="", help="text before the next token (default: start of a document)")
    c.add_argument("--temperature", type=float, nargs="+", default=[0.5, 1.0, 2.0],
                   help="one or more temperatures, side by side; 0 is the argmax limit (default: 0.5 1 2)")
    c.add_argument("--top", type=int, default=10, help="how many tokens to list (default 10)")
    c = command("attention", "attention maps as a grid of heatmaps, one per layer x head")
    c.add_argument("--prompt", required=True, help="the text whose attention to draw")
    c.add_argument("--layer", type=int, help="only this layer (0-based; default: all)")
    c.add_argument("--head", type=int, help="only this head (0-based; default: all)")
    c.add_argument("--out", default="attention.png", help="PNG to write (default attention.png)")
    c = command("embeddings", "nearest tokens by cosine similarity in the token embedding W_E")
    c.add_argument("--nearest", metavar="TOKEN", help="the tokens nearest to TOKEN")
    c.add_argument("--analogy", nargs=3, metavar=("A", "B", "C"), help="the tokens nearest to A - B + C")
    c.add_argument("--k", type=int, default=10, help="how many to list (default 10)")
    c = command("lens", "logit lens: the top next token at each position after each layer")
    c.add_argument("--prompt", required=True, help="the text to read")
    c.add_argument("--out", help="also draw the table as a PNG here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return errors.run_cli(lambda: args.func(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
