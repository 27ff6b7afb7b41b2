"""Train a GPT from a config: python train.py [CONFIG] [section.key=value ...] (the same as `gptjax train`)."""

import sys

from gptjax.cli import train as main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
