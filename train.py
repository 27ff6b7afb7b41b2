"""Train a GPT from a config: python train.py [CONFIG] [section.key=value ...]

Re-running the same command resumes from the run directory's latest checkpoint.
"""

import argparse
import sys

from gptjax import config, errors


def main(argv: list[str]) -> int:
    parser = errors.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=config.help_text())
    parser.add_argument("config", nargs="?", help=f"config file or preset name (default: {config.DEFAULT_CONFIG})")
    parser.add_argument("overrides", nargs="*", help="section.key=value settings, e.g. model.n_layer=4")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    args = parser.parse_args(argv)
    if args.config and "=" in args.config:  # only overrides were given: use the default config
        args.overrides, args.config = [args.config, *args.overrides], None

    def run():
        cfg = config.load(args.config, args.overrides)
        from gptjax import sharding, trainer  # JAX loads only after the config checks out, so a typo fails at once

        sharding.initialize_distributed()  # multi-host runs: join the others before any device is used

        last = trainer.train(cfg)
        if "val_loss" in last and sharding.is_main_process():
            print(f"done: step {last['step']}, val loss {last['val_loss']:.4f}, run dir {cfg.run.out_dir}")

    return errors.run_cli(run, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
