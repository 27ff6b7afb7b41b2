"""gptjax: train small GPTs in JAX/Flax; load_config, fit, load_run and sample are its Python API (README)."""

import importlib as _importlib
import os as _os

# Old module paths (`python -m gptjax.inspect`, `gptjax.sweep`, `gptjax.convert`) resolve to
# thin aliases in legacy/ for one release, without their files cluttering this folder.
__path__.append(_os.path.join(_os.path.dirname(__file__), "legacy"))  # noqa: F821 (a package's own __path__)

# `fit`, not `train`: gptjax.train is the training subpackage, and importing it would replace the name.
# `import gptjax` stays cheap: no JAX, Flax or orbax until one of these names is first used.
__all__ = ["load_config", "fit", "load_run", "sample"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(_importlib.import_module("gptjax.api"), name)
    raise AttributeError(f"module 'gptjax' has no attribute {name!r}")
