"""gptjax: train small GPTs in JAX/Flax from a config file, then sample from the checkpoint."""

import os as _os

# Old module paths (`python -m gptjax.inspect`, `gptjax.sweep`, `gptjax.convert`) resolve to
# thin aliases in legacy/ for one release, without their files cluttering this folder.
__path__.append(_os.path.join(_os.path.dirname(__file__), "legacy"))  # noqa: F821 (a package's own __path__)
