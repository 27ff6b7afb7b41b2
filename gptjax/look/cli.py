"""Look inside a model: gptjax inspect {params,next,attention,embeddings,lens,heads,roles,attribute,report} ...

The command line over views.py and commands.py: parse flags, load the run, check the flags against
the model, then print the tables and save the pictures that gptjax/render.py makes. Every
mistake is one `error:` line and exit code 2. Heavy imports wait inside the commands, so
`--help` is instant.
"""

from __future__ import annotations

import argparse
import sys

from gptjax import errors
from gptjax.look import commands, views

EPILOG = """examples:
  gptjax inspect params --config gpt3
  gptjax inspect next runs/shakespeare_char_cpu --prompt "ROMEO:" --temperature 0 0.5 1 2
  gptjax inspect attention runs/shakespeare_char_cpu --prompt "To be, or not" --out attention.png
  gptjax inspect embeddings runs/shakespeare_char_cpu --analogy A a b
  gptjax inspect lens runs/shakespeare_char_cpu --prompt "ROMEO:" --out lens.png"""  # commands.EPILOG follows


def parser() -> argparse.ArgumentParser:
    p = errors.ArgumentParser(prog="gptjax inspect", description=__doc__.splitlines()[0],
                              epilog=EPILOG + commands.EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, func, run_dir: bool = True):
        c = sub.add_parser(name, help=help, description=help)
        if run_dir:
            c.add_argument("run_dir", help="a run directory written by train.py")
            c.add_argument("--step", default="latest", help="checkpoint: latest, best, or a step number")
        c.add_argument("--debug", action="store_true", help="show full tracebacks")
        c.set_defaults(func=func)
        return c

    c = command("params", "every weight group with its shape, count and share; totals per layer and overall",
                views.cmd_params, run_dir=False)
    c.add_argument("targets", nargs="*", metavar="RUN_DIR | section.key=value",
                   help="a run directory; or, with --config, overrides such as model.n_layer=6")
    c.add_argument("--config", help="a preset name or config file instead of a run (e.g. gpt2, gpt3)")
    c.add_argument("--all-layers", action="store_true", help="list every layer, even when all are the same")
    c = command("next", "the top-N next tokens with logits and probabilities at each temperature", views.cmd_next)
    c.add_argument("--prompt", default="", help="text before the next token (default: start of a document)")
    c.add_argument("--temperature", type=float, nargs="+", default=[0.5, 1.0, 2.0],
                   help="one or more temperatures, side by side; 0 is the argmax limit (default: 0.5 1 2)")
    c.add_argument("--top", type=int, help="how many tokens to list (default 10)")
    c = command("attention", "attention maps as a grid of heatmaps, one per layer x head", views.cmd_attention)
    c.add_argument("--prompt", required=True, help="the text whose attention to draw")
    c.add_argument("--layer", type=int, help="only this layer (0-based; default: all)")
    c.add_argument("--head", type=int, help="only this head (0-based; default: all)")
    c.add_argument("--out", help="PNG to write (default: RUN_DIR/attention.png)")
    c = command("embeddings", "nearest tokens by cosine similarity in the token embedding W_E", views.cmd_embeddings)
    c.add_argument("--nearest", metavar="TOKEN", help="the tokens nearest to TOKEN")
    c.add_argument("--analogy", nargs=3, metavar=("A", "B", "C"), help="the tokens nearest to A - B + C")
    c.add_argument("--k", type=int, help="how many to list (default 10)")
    c = command("lens", "logit lens: the top next token at each position after each layer", views.cmd_lens)
    c.add_argument("--prompt", required=True, help="the text to read")
    c.add_argument("--out", help="also draw the table as a PNG here")
    commands.add_commands(command)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return errors.run_cli(lambda: args.func(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
