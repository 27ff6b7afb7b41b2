"""gptjax: train small GPTs in JAX/Flax; load_config, fit, load_run and sample are its Python API (README)."""

import importlib as _importlib

# `fit`, not `train`: gptjax.train is the training subpackage, and importing it would replace the name.
# `import gptjax` stays cheap: no JAX, Flax or orbax until one of these names is first used.
__all__ = ["load_config", "fit", "load_run", "sample"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(_importlib.import_module("gptjax.api"), name)
    raise AttributeError(f"module 'gptjax' has no attribute {name!r}")
