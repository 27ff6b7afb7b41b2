"""Old path of gptjax.look.cli, kept for one release: `python -m gptjax.inspect` is `gptjax inspect`."""

import sys

from gptjax import runtime
from gptjax.look.cli import main

if __name__ == "__main__":
    runtime.configure()  # the compilation cache, as `gptjax inspect` has it
    sys.exit(main(sys.argv[1:]))
