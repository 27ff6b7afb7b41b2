"""Config loading: every preset builds, overrides apply, and bad configs fail with one clear line."""

import dataclasses

import pytest
from flax import nnx

from gptjax import config
from gptjax.config import ConfigError
from gptjax.model import GPT, count_params

PRESETS = sorted(p.stem for p in config.CONFIG_DIR.glob("*.yaml"))


def test_presets_exist():
    assert {"shakespeare_char", "shakespeare_char_cpu", "shakespeare_gpt2", "gpt2", "gpt2-medium", "gpt2-large",
            "gpt2-xl", "tiny", "shakespeare_char_modern"} <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_parses_and_builds(name):
    cfg = config.load(name)
    vocab = cfg.model.n_vocab or (65 if cfg.data.tokenizer == "char" else 50257)
    model_cfg = dataclasses.replace(cfg.model, n_vocab=vocab)
    abstract = nnx.eval_shape(lambda: GPT(model_cfg, rngs=nnx.Rngs(0)))  # shapes only: gpt2-xl costs nothing
    assert count_params(abstract) == model_cfg.n_params
    assert cfg.run.out_dir == f"runs/{name}"


def test_char_presets_take_vocab_from_data():
    for name in ("shakespeare_char", "shakespeare_char_cpu", "shakespeare_gpt2", "tiny"):
        assert config.load(name).model.n_vocab is None


def test_overrides_apply_with_types():
    cfg = config.load("tiny", ["model.n_layer=3", "train.lr=2e-3", "model.bias=false", "run.out_dir=/tmp/x"])
    assert (cfg.model.n_layer, cfg.train.lr, cfg.model.bias, cfg.run.out_dir) == (3, 2e-3, False, "/tmp/x")
    assert isinstance(cfg.train.lr, float)


def test_derived_sizes_are_the_shapes_training_uses():
    from gptjax.train import trainer

    cfg, ds, mesh = trainer.setup(config.load("tiny", ["train.batch_size=8", "train.grad_accum=4"]))
    x_abt, _ = trainer.train_batch(cfg, ds, 0, mesh)
    assert x_abt.shape == (4, cfg.train.micro_batch_size, cfg.model.n_ctx) and x_abt.size == cfg.tokens_per_step
    attn = GPT(cfg.model, rngs=nnx.Rngs(0)).blocks[0].attn
    assert attn.wq_dhk.shape == (cfg.model.n_embd, cfg.model.n_head, cfg.model.head_dim)


# Unknown keys, wrong types, bad sizes and n_embd % n_head are in tests/test_bad_input.py, through the CLI.
@pytest.mark.parametrize("overrides, message", [
    (["modle.n_layer=2"], "unknown config key 'modle.n_layer'"),
    (["model.n_layer=2.5"], "bad value for model.n_layer"),
    (["train.batch_size=10", "train.grad_accum=4"], "train.batch_size=10 is not divisible by train.grad_accum=4"),
    (["model.dropout=1.5"], "model.dropout must be in [0, 1)"),
    (["data.tokenizer=bpe"], "data.tokenizer must be char, gpt2 or the path of a tokenizer.json"),
    (["run.wandb=yes"], "run.wandb must be off, offline or online"),
    (["n_layer=2"], "must look like section.key=value"),
])
def test_bad_overrides_fail_with_one_clear_line(overrides, message):
    with pytest.raises(ConfigError) as err:
        config.load("tiny", overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_files(tmp_path):
    # A missing file and a YAML syntax error are in tests/test_bad_input.py, through the CLI.
    bad = tmp_path / "bad.yaml"
    bad.write_text("modell:\n  n_layer: 2\n")
    with pytest.raises(ConfigError, match="unknown section 'modell'"):
        config.load(str(bad))


def test_help_lists_every_key_with_default_and_meaning():
    text = config.help_text()
    for key, field in config.all_keys().items():
        line = next(line for line in text.splitlines() if line.strip().startswith(key + " "))
        assert str(field.default) in line and field.metadata["help"] in line


def test_resolved_config_round_trips_through_yaml():
    import yaml

    cfg = config.load("gpt2")
    assert config.from_dict(yaml.safe_load(cfg.to_yaml())) == cfg
