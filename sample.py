"""Sample text from a trained run: python sample.py RUN_DIR [--prompt TEXT] ... (the same as `gptjax sample`)."""

import sys

from gptjax.cli import sample as main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
