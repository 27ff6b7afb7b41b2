"""Config: the tree of frozen dataclasses (sections.py) and reading it from files and overrides (loading.py)."""

from gptjax.config.loading import (
                                   CONFIG_DIR,
                                   DEFAULT_CONFIG,
                                   SECTIONS,
                                   USER_CONFIG_DIR,
                                   all_keys,
                                   from_dict,
                                   help_text,
                                   load,
                                   parse_overrides,
                                   resolve_path,
)
from gptjax.config.sections import Config, ConfigError, DataConfig, MeshConfig, ModelConfig, RunConfig, TrainConfig

__all__ = ["CONFIG_DIR", "DEFAULT_CONFIG", "SECTIONS", "USER_CONFIG_DIR", "Config", "ConfigError", "DataConfig",
           "MeshConfig", "ModelConfig", "RunConfig", "TrainConfig", "all_keys", "from_dict", "help_text", "load",
           "parse_overrides", "resolve_path"]
