"""`python -m gptjax COMMAND ...`: the same as the `gptjax` console script."""

import sys

from gptjax.cli import main

sys.exit(main())
