"""`python -m gptjax COMMAND ...`: the same as the `gptjax` console script."""

from gptjax.cli import entry

entry()
