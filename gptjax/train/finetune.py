"""Fine-tuning: what `train.init_from` names (a run, a Hugging Face GPT-2 folder or a hub name), and its weights."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from flax import nnx

from gptjax.config import Config, ConfigError, ModelConfig
from gptjax.data import tokenizer as tokenizers
from gptjax.interop import hf
from gptjax.interop.convert import as_state, hf_tokenizer
from gptjax.train import runs

SHAPE_KEYS = ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer", "bias")


@dataclasses.dataclass
class Source:
    """What `train.init_from` names: the model's shape and tokenizer now, its weights when a run starts."""
    spec: str
    model: ModelConfig
    tokenizer: object
    load: object  # () -> pure dict of parameters

    def apply(self, cfg: Config) -> Config:
        """cfg with the source's model shape; dropout and compute_dtype stay the config's."""
        default = ModelConfig()
        # A value that is neither the default nor the source's was set on purpose: say so rather than ignore it.
        clash = [key for key in SHAPE_KEYS
                 if getattr(self.model, key) != getattr(cfg.model, key) != getattr(default, key)]
        if clash:
            def show(model):
                return ", ".join(f"model.{key}={getattr(model, key)}" for key in clash)
            raise ConfigError(f"train.init_from={self.spec} has {show(self.model)}, but the config sets "
                              f"{show(cfg.model)}; remove those keys: a fine-tune keeps its source's shape")
        if cfg.data.tokenizer == "gpt2" and self.model.n_vocab < hf.GPT2_VOCAB:
            raise ConfigError(f"train.init_from={self.spec} has a vocabulary of {self.model.n_vocab}, too small "
                              f"for data.tokenizer=gpt2 ({hf.GPT2_VOCAB}); use a model with GPT-2's vocabulary")
        return cfg.replace(model={key: getattr(self.model, key) for key in SHAPE_KEYS})

    def check_tokenizer(self, data_tokenizer) -> None:
        # Token ids only mean the same thing under the same tokenizer; an ids source has no
        # known tokenizer, so any data whose ids fit its vocabulary is accepted.
        mine = self.tokenizer
        if mine.kind != "ids" and mine.to_json() != data_tokenizer.to_json():
            what = _described(mine, same_kind=mine.kind == data_tokenizer.kind)
            # A Hugging Face file is named by its path: the source run's own copy is the one to use.
            setting = f"{self.spec}/tokenizer.json" if mine.kind == "hf" else mine.kind
            raise ConfigError(f"train.init_from={self.spec} was trained with {what}, but the data uses "
                              f"{data_tokenizer.kind}; set data.tokenizer={setting} (and the same data source)")

    def params(self, abstract: nnx.State) -> nnx.State:
        return as_state(abstract, self.load())


def _described(tokenizer, same_kind: bool) -> str:
    if same_kind:
        return "a different tokenizer.json" if tokenizer.kind == "hf" else "a different character set"
    return "a Hugging Face tokenizer.json" if tokenizer.kind == "hf" else f"the {tokenizer.kind} tokenizer"


def open_source(spec: str) -> Source:
    """A gptjax run directory, a local Hugging Face GPT-2 folder, or a hub name (needs network)."""
    path = Path(spec).expanduser()
    if (path / runs.CONFIG_FILE).is_file():
        cfg = runs.load_config(path)
        return Source(spec, cfg.model, tokenizers.load(path / runs.TOKENIZER_FILE),
                      lambda: nnx.to_pure_dict(runs.load(path).params))
    src = hf.locate(spec)
    model_cfg = hf.model_config(hf.load_config(src), src)
    return Source(spec, model_cfg, hf_tokenizer(model_cfg.n_vocab),
                  lambda: hf.to_params(hf.read_tensors(src), model_cfg, src))
