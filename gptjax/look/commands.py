"""`gptjax inspect heads|roles|attribute|report`: which heads matter, what each does, and one HTML page of it all.

Flags are checked before the run is loaded where they can be; heavy imports wait inside the
commands, so `--help` stays instant.
"""

from __future__ import annotations

from gptjax.look.views import InspectError, encode_prompt, load_run

EPILOG = """
  gptjax inspect heads runs/shakespeare_char_cpu --ablation mean --out heads.png
  gptjax inspect roles runs/shakespeare_char_cpu --out roles.png
  gptjax inspect attribute runs/shakespeare_char_cpu --prompt "To be, or not to b" --target e
  gptjax inspect report runs/shakespeare_char_cpu --prompt "To be, or not to be" --out report.html"""


def positive(flag: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise InspectError(f"{flag} must be at least 1, got {value}")


def val_batches(run, n: int) -> list:
    """The first n of the run's fixed evaluation batches of the val split: the batches its logged val loss used."""
    from gptjax import data
    from gptjax.train import trainer

    ds = data.prepare(run.cfg.data)
    data.check_fits(ds, run.cfg.model.n_ctx)
    if ds.vocab_size > run.cfg.model.n_vocab:
        raise InspectError(f"the data {run.cfg.data.source} now has {ds.vocab_size} tokens, more than the model's "
                           f"{run.cfg.model.n_vocab}; it changed since training: restore it")
    return [trainer.eval_batch(run.cfg, ds.val, i) for i in range(n)]


def knockouts(args, run, model, tick=None):
    """Knock-outs on the val batches, on a bar of their forward passes (or on `tick`: the report's bar)."""
    from gptjax import progress
    from gptjax.look import heads

    batches = val_batches(run, args.batches or run.cfg.train.eval_batches)
    if tick is not None:
        return heads.knockouts(model, batches, args.ablation, tick)
    with progress.bar(knockout_passes(args, run), "knock-outs", "batch", leave=False) as shown:
        return heads.knockouts(model, batches, args.ablation, shown.update)


def knockout_passes(args, run) -> int:
    from gptjax.look import heads

    return heads.knockout_passes(run.cfg.model, args.batches or run.cfg.train.eval_batches, args.ablation)


def role_scores(args, run, model, tick=None):
    from gptjax import progress
    from gptjax.look import heads

    ids = heads.repeated_sequences(run.tokenizer.vocab_size, run.cfg.model.n_ctx, run.tokenizer.bos_ids,
                                   args.sequences, args.seed)
    if tick is not None:
        return heads.role_scores(model, ids, tick)
    with progress.bar(len(ids), "role scores", "seq", leave=False) as shown:
        return heads.role_scores(model, ids, shown.update)


def attribute(run, model, ids: list[int], target: str | None):
    """The attribution of `target` (default: the model's top prediction) after the prompt."""
    from gptjax.look import analysis, attribution, render

    tok = run.tokenizer
    if target is None:
        t = int(analysis.next_logits(model, ids, tok.vocab_size).argmax())
    else:
        from gptjax import errors

        try:
            pieces = tok.encode(target)
        except errors.UserError as e:
            raise InspectError(f"--target {target!r}: {e}") from None
        if len(pieces) != 1:
            raise InspectError(f"--target {target!r} is {len(pieces)} tokens; give exactly one token")
        t = pieces[0]
    return attribution.attribute(model, ids, t), render.show(tok.decode([t]))


def table_and_picture(args, compute, table, figure) -> None:
    """Load the run, compute, print the table, and draw the figure when --out asks."""
    from gptjax.look import render

    if args.out:
        render.check_out(args.out)
    run, model = load_run(args)
    result = compute(args, run, model)
    print(table(result))
    if args.out:
        render.save(figure(result), args.out)
        print(f"wrote {args.out}")


def cmd_heads(args) -> None:
    from gptjax.look import figures

    positive("--batches", args.batches)
    table_and_picture(args, knockouts, figures.knockout_table, figures.knockout_figure)


def cmd_roles(args) -> None:
    from gptjax.look import figures

    positive("--sequences", args.sequences)
    table_and_picture(args, role_scores, figures.roles_table, figures.roles_figure)


def cmd_attribute(args) -> None:
    from gptjax.look import figures

    run, model = load_run(args)
    a, token = attribute(run, model, encode_prompt(run, args.prompt), args.target)
    print(figures.attribution_table(a, token))


def cmd_report(args) -> None:
    from gptjax import progress
    from gptjax.look import report

    positive("--batches", args.batches)
    positive("--sequences", args.sequences)
    out = report.check_out(args.out)
    run, model = load_run(args)
    ids = encode_prompt(run, args.prompt)
    if len(ids) > report.MAX_TOKENS:
        raise InspectError(f"--prompt is {len(ids)} tokens; the report draws every head's attention over at most "
                           f"{report.MAX_TOKENS}, so give a shorter prompt")
    # One bar for the whole page: the knock-outs' forward passes, then the role sequences, then the rest.
    with progress.bar(knockout_passes(args, run) + args.sequences + 1, "report", leave=False) as shown:
        knocked, roles = knockouts(args, run, model, shown.update), role_scores(args, run, model, shown.update)
        page = report.build(str(args.run_dir), run, model, ids, knocked, roles,
                            *attribute(run, model, ids, args.target))
        shown.update()
    report.write(page, out)
    print(f"wrote {args.out}: one self-contained page (open it in any browser, no server needed)")


def add_commands(command) -> None:
    """The commands of this module, on `gptjax inspect`'s parser (`command` makes one sub-parser)."""
    def common(c, out: str | None):
        c.add_argument("--ablation", choices=("zero", "mean"), default="zero",
                       help="replace a part's output by zero, or by its mean over the same batches (default zero)")
        c.add_argument("--batches", type=int,
                       help="val batches to measure the loss on (default: the run's train.eval_batches)")
        if out:
            c.add_argument("--out", help=out)

    def roles_flags(c, out: str | None):
        c.add_argument("--sequences", type=int, default=32, help="repeated random sequences to score (default 32)")
        c.add_argument("--seed", type=int, default=0, help="seed of the random sequences (default 0)")
        if out:
            c.add_argument("--out", help=out)

    common(command("heads", "val-loss change from knocking out each head, attention and MLP sublayer", cmd_heads),
           "also draw the table as a PNG here")
    roles_flags(command("roles", "previous-token, duplicate-token and induction scores per head", cmd_roles),
                "also draw the scores as a PNG here")
    for c in (command("attribute", "direct logit attribution: each part's contribution to one next-token logit",
                      cmd_attribute),
              command("report", "one self-contained HTML page: knock-outs, roles, attribution, hoverable attention",
                      cmd_report)):
        c.add_argument("--prompt", required=True, help="the text before the token (report: whose attention to show)")
        c.add_argument("--target", help="the next token to explain (default: the model's top prediction)")
    common(c, None)
    roles_flags(c, None)
    c.add_argument("--out", default="report.html", help="HTML file to write (default report.html)")
