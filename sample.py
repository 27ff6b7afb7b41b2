"""Sample text from a trained run: python sample.py RUN_DIR [--prompt TEXT] ... (the same as `gptjax sample`)."""

import sys

from gptjax import runtime
from gptjax.cli import sample as main

if __name__ == "__main__":
    runtime.exit_at_once(main(sys.argv[1:]))
