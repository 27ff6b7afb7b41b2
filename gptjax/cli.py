"""The command line: `gptjax train|sample|sweep|inspect|convert|bench|tokenizer ...` (train.py, sample.py call it)."""

from __future__ import annotations

import argparse
import importlib
import sys

from gptjax import errors, runtime

TRAIN_DOC = """Train a GPT from a config: gptjax train [CONFIG] [section.key=value ...]

Re-running the same command resumes from the run directory's latest checkpoint.
A run's length is train.steps, or a compute budget that sets it: train.flops_budget=1e15 (FLOPs, as
model FLOPs per token x tokens) or train.tokens_per_param=20 (tokens per parameter). A length given
on the command line replaces the config file's; two in one place are an error.
"""


def _help_epilog(argv: list[str]) -> str:
    """The key list for --help; after a config (and overrides), with the values that config resolves to."""
    from gptjax import config

    words = [a for i, a in enumerate(argv) if not a.startswith("-") and argv[i - 1:i] != ["--seeds"]]
    if not {"-h", "--help"} & set(argv):
        return ""  # only --help shows the keys: a bad flag's one line needs none of them
    # No config named: the values are the default preset's, the one a bare `gptjax train` trains.
    name, overrides = (None, words) if not words or "=" in words[0] else (words[0], words[1:])
    return config.help_text(config.load(name, overrides), name or config.DEFAULT_CONFIG)


def train(argv: list[str]) -> int:
    from gptjax import config

    try:
        epilog = _help_epilog(argv)
    except errors.UserError as e:  # a bad config named beside --help: say so, as a run would
        print(f"error: {e}", file=sys.stderr)
        return 2
    parser = errors.ArgumentParser(prog="gptjax train", description=TRAIN_DOC, epilog=epilog,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", help=f"config file or preset name (default: {config.DEFAULT_CONFIG})")
    parser.add_argument("overrides", nargs="*", help="section.key=value settings, e.g. model.n_layer=4")
    parser.add_argument("--seeds", type=int, default=1, metavar="N",
                        help="train N seeds together, one vmapped step for all: seed i trains with train.seed + i "
                             "in run.out_dir/seed=i, as it would alone (default 1: just this run)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    args = parser.parse_intermixed_args(argv)  # flags anywhere, as in `train.py CONFIG --seeds 3 train.steps=500`
    if args.config and "=" in args.config:  # only overrides were given: use the default config
        args.overrides, args.config = [args.config, *args.overrides], None

    def run():
        runtime.configure()
        cfg = config.load(args.config, args.overrides)
        if args.seeds < 1:
            raise errors.UserError(f"--seeds must be a positive integer, got {args.seeds}")
        from gptjax import sharding  # JAX loads only after the config checks out, so a typo fails at once
        from gptjax.train import seeds

        multi_host = sharding.initialize_distributed()  # join the other processes before any device is used
        if not multi_host:  # before JAX starts: each CPU core a device, for the batch or for the seeds
            sharding.split_cores(for_runs=args.seeds > 1)
        cfgs = [cfg] if args.seeds == 1 else seeds.seed_configs(cfg, args.seeds)
        seeds.train(cfgs)  # one config: trainer.train; each run ends with its summary line

    return errors.run_cli(run, debug=args.debug)


def sample_parser() -> errors.ArgumentParser:
    parser = errors.ArgumentParser(
        prog="gptjax sample", description="Sample text from a trained run: gptjax sample RUN_DIR [--prompt TEXT] ...")
    parser.add_argument("run_dir", help="a run directory written by train.py")
    parser.add_argument("--prompt", default="", help="text to continue (default: start of a new document)")
    parser.add_argument("--max-new-tokens", type=int, default=500, help="tokens to generate per sample")
    parser.add_argument("--temperature", type=float, default=0.8, help="softmax temperature; 0 is greedy")
    parser.add_argument("--top-k", type=int, default=None, help="sample only from the k most likely tokens")
    parser.add_argument("--top-p", type=float, default=1.0, help="sample only from the smallest set with this mass")
    parser.add_argument("--num-samples", type=int, default=1, help="independent samples to print")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same text")
    parser.add_argument("--window", choices=("exact", "shift"), default="exact",
                        help="past n_ctx: exact recomputes the window per token; shift (approximate, faster) "
                             "re-encodes the newest half and keeps caching")
    parser.add_argument("--step", default="latest", help="checkpoint to use: latest, best, or a step number")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    return parser


def sample(argv: list[str]) -> int:
    args = sample_parser().parse_args(argv)

    def run():
        runtime.configure()
        import jax

        from gptjax import api, sampling
        from gptjax.train import resources, runs

        # Flags and prompt are checked against the run's tokenizer before any weights load.
        cfg, tok = runs.read_files(args.run_dir)
        options = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                       max_new_tokens=args.max_new_tokens, num_samples=args.num_samples)
        sampling.check_options(**options, vocab_size=tok.vocab_size, seed=args.seed)
        sampling.check_memory(cfg.model, args.num_samples, args.max_new_tokens,
                              *resources.device_memory(jax.devices()[0]))  # before the weights load
        if args.prompt:
            tok.encode(args.prompt)
        samples = api.sample(runs.load(args.run_dir, args.step), args.prompt, **options, seed=args.seed,
                             window=args.window)
        for i, text in enumerate(samples):
            if i:
                print("-" * 40)
            print(args.prompt + text)

    return errors.run_cli(run, debug=args.debug)


# command -> the module whose main(argv) runs it (imported only when asked for, so --help is instant)
COMMANDS = {
    "train": "gptjax.cli:train",
    "sample": "gptjax.cli:sample",
    "sweep": "gptjax.ablate.sweep:main",
    "inspect": "gptjax.look.cli:main",
    "convert": "gptjax.interop.convert:main",
    "bench": "gptjax.bench:main",
    "tokenizer": "gptjax.data.tokenizer_cli:main",
}
SUMMARIES = {
    "train": "train a GPT from a config (re-run to resume)",
    "sample": "generate text from a trained run",
    "sweep": "train a grid of configs (ablations) and report on them",
    "inspect": "look inside a trained model: parameters, attention, heads, logit lens, report",
    "convert": "Hugging Face GPT-2 checkpoints in and out of run directories",
    "bench": "time the train step, evaluation and sampling of a config",
    "tokenizer": "train a BPE tokenizer on your corpus, or compare tokenizers on it",
}
USAGE = "usage: gptjax COMMAND [ARGS ...]   (gptjax COMMAND --help for each)"


def overview() -> str:
    """`gptjax --help`: every command with its one line."""
    width = max(map(len, COMMANDS))
    lines = [USAGE, "", "Train small GPTs in JAX/Flax.", "", "commands:"]
    lines += [f"  {name:<{width}}  {SUMMARIES.get(name, '')}" for name in COMMANDS]
    lines += ["", "options:", "  -h, --help  show this message", "  --version   show gptjax's version"]
    return "\n".join(lines)


def version() -> str:
    from importlib import metadata

    try:
        return f"gptjax {metadata.version('gptjax')}"
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "gptjax (not installed)"


def entry() -> None:
    """The `gptjax` console script and `python -m gptjax`: main(), then a sampler's process ends at once."""
    code = main()
    if sys.argv[1:2] == ["sample"]:
        runtime.exit_at_once(code)
    sys.exit(code)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        if argv[:1] == ["--version"]:
            print(version())
            return 0
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown command {argv[0]!r}{errors.did_you_mean(argv[0], COMMANDS)}; "
                  f"commands: {', '.join(COMMANDS)} (gptjax --help)", file=sys.stderr)
            return 2
        print(overview())
        return 0 if argv else 2
    runtime.configure(compilation_cache=argv[0] != "bench")  # bench times compilation: no cache hits
    module, _, function = COMMANDS[argv[0]].partition(":")
    return getattr(importlib.import_module(module), function)(argv[1:])
