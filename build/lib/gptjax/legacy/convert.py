"""Old path of gptjax.interop.convert, kept for one release: `python -m gptjax.convert` is `gptjax convert`."""

import sys

from gptjax.interop.convert import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
