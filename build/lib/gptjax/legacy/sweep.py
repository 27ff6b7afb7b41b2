"""Old path of gptjax.ablate.sweep, kept for one release: `python -m gptjax.sweep` is `gptjax sweep`."""

import sys

from gptjax.ablate.sweep import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
