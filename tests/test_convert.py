"""GPT-2 interop: Hugging Face checkpoints convert exactly both ways, match transformers, and fine-tune.

Tests that compare against transformers skip without the [hf] extra; the rest build HF-format
folders with numpy alone, as the conversion itself needs nothing more.
"""

import dataclasses
import json
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from gptjax import config, sampling
from gptjax.config import ConfigError, ModelConfig
from gptjax.data.tokenizer import IdsTokenizer, TokenizerError
from gptjax.interop import convert, hf
from gptjax.interop.hf import ConvertError
from gptjax.model import GPT
from gptjax.train import finetune, runs, trainer
from gptjax.train.checkpoint import Checkpoints
from gptjax.train.step import jit_eval_step
from gptjax.train.tracking import read_metrics
from tests.conftest import ROOT

SHAPE = dict(n_layer=2, n_head=4, n_embd=64, vocab_size=1000, n_positions=128)
NEEDS_HF = "needs the [hf] extra (transformers + torch): pip install torch==2.13.0 && pip install -e '.[hf]'"


def write_hf_folder(folder, *, n_layer, n_head, n_embd, vocab_size, n_positions, seed=0, **extra):
    """A GPT-2 folder in transformers' layout with random values in every tensor, written with numpy."""
    D, rng = n_embd, np.random.default_rng(seed)
    layer = {"ln_1.weight": (D,), "ln_1.bias": (D,), "attn.c_attn.weight": (D, 3 * D), "attn.c_attn.bias": (3 * D,),
             "attn.c_proj.weight": (D, D), "attn.c_proj.bias": (D,), "ln_2.weight": (D,), "ln_2.bias": (D,),
             "mlp.c_fc.weight": (D, 4 * D), "mlp.c_fc.bias": (4 * D,), "mlp.c_proj.weight": (4 * D, D),
             "mlp.c_proj.bias": (D,)}
    shapes = {"wte.weight": (vocab_size, D), "wpe.weight": (n_positions, D), "ln_f.weight": (D,), "ln_f.bias": (D,),
              **{f"h.{i}.{name}": shape for i in range(n_layer) for name, shape in layer.items()}}
    # LayerNorm gains around 1, everything else around 0, all of it random.
    tensors = {f"transformer.{k}": (float(k.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")))
                                    + 0.1 * rng.standard_normal(s)).astype(np.float32) for k, s in shapes.items()}
    folder.mkdir(parents=True)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    hf_cfg = {"model_type": "gpt2", "n_layer": n_layer, "n_head": n_head, "n_embd": n_embd, "vocab_size": vocab_size,
              "n_positions": n_positions, "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new", **extra}
    (folder / "config.json").write_text(json.dumps(hf_cfg))
    return folder


def float32_model(run_dir):
    """A converted run's graphdef, params and config, computing in float32 whatever the backend."""
    run = runs.load(run_dir)
    cfg = dataclasses.replace(run.cfg.model, compute_dtype="float32")
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(0))), nnx.Param)
    return graphdef, run.params, cfg


def forward(graphdef, params, x_bt) -> np.ndarray:
    # Jitted: op-by-op dispatch of the whole model costs seconds on a busy CPU.
    return np.asarray(jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))(params, jnp.asarray(x_bt)))


def same_bits(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
                                        and a[k].tobytes() == b[k].tobytes() for k in a)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write_hf_folder(tmp_path_factory.mktemp("synthetic") / "hf", **SHAPE)


@pytest.fixture(scope="module")
def synthetic_run(synthetic, tmp_path_factory):
    return convert.from_hf(str(synthetic), tmp_path_factory.mktemp("synthetic-run") / "run")


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason=NEEDS_HF)


@pytest.fixture(scope="module")
def transformers(torch):
    return pytest.importorskip("transformers", reason=NEEDS_HF)


@pytest.fixture(scope="module")
def hf_model(torch, transformers, tmp_path_factory):
    """A small GPT-2 built by transformers, every tensor random (so a swapped bias or gain shows), saved locally."""
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**SHAPE, bos_token_id=None, eos_token_id=None))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(float(name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight"))) + 0.1 * torch.randn_like(p))
    model.eval()
    folder = tmp_path_factory.mktemp("transformers") / "gpt2-tiny"
    model.save_pretrained(folder)
    return model, folder


@pytest.fixture(scope="module")
def hf_run(hf_model, tmp_path_factory):
    return convert.from_hf(str(hf_model[1]), tmp_path_factory.mktemp("hf-run") / "run")


# ---------------------------------------------------------------------------
# Against transformers (need [hf])

def test_logits_equal_transformers_at_every_position(hf_model, hf_run, torch):
    model, _ = hf_model
    graphdef, params, cfg = float32_model(hf_run)
    rng = np.random.default_rng(0)
    for shape in [(4, SHAPE["n_positions"]), (3, 37)]:  # the full window (up to position n_ctx-1), and a short one
        x = rng.integers(0, SHAPE["vocab_size"], shape)
        with torch.no_grad():
            theirs = model(torch.from_numpy(x)).logits.numpy()
        assert theirs.std() > 0.3  # logits large enough that 1e-4 is a real test
        np.testing.assert_allclose(forward(graphdef, params, x), theirs, rtol=0, atol=1e-4)


def test_round_trip_through_gptjax_is_bit_identical_and_loads_in_transformers(hf_model, hf_run, tmp_path, transformers,
                                                                              torch):
    model, folder = hf_model
    out = convert.to_hf(hf_run, tmp_path / "out")
    assert same_bits(load_file(folder / "model.safetensors"), load_file(out / "model.safetensors"))
    reloaded, info = transformers.GPT2LMHeadModel.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched tensors
    theirs, mine = dict(model.named_parameters()), dict(reloaded.named_parameters())
    assert theirs.keys() == mine.keys() and all(torch.equal(theirs[k], mine[k]) for k in theirs)


def test_pytorch_bin_in_the_legacy_layout_converts_the_same(hf_model, hf_run, tmp_path, torch):
    # OpenAI's original files: no "transformer." prefix, causal-mask buffers beside the weights.
    model, folder = hf_model
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    shutil.copy(folder / "config.json", legacy)
    state = {k.removeprefix("transformer."): v for k, v in model.state_dict().items()}
    for i in range(SHAPE["n_layer"]):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, SHAPE["n_positions"], SHAPE["n_positions"]))
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, legacy / "pytorch_model.bin")
    run = convert.from_hf(str(legacy), tmp_path / "run")
    a, b = (jax.tree.leaves(runs.load(r).params) for r in (run, hf_run))
    assert len(a) == len(b) and all(np.asarray(x).tobytes() == np.asarray(y).tobytes() for x, y in zip(a, b))


def test_greedy_generation_equals_transformers_generate(hf_model, hf_run, torch):
    model, _ = hf_model
    graphdef, params, cfg = float32_model(hf_run)
    rng = np.random.default_rng(1)
    for prompt_len in (5, 100):  # the second runs to position 120 of 128
        prompt = rng.integers(0, SHAPE["vocab_size"], prompt_len).tolist()
        ours = sampling.generate(graphdef, params, cfg, prompt, max_new_tokens=20, temperature=0.0)[0]
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, prompt_len, dtype=torch.long),
                                 do_sample=False, max_new_tokens=20, pad_token_id=0, eos_token_id=None)
        theirs = out[0, prompt_len:].tolist()
        assert len(theirs) == 20 and ours == theirs


# ---------------------------------------------------------------------------
# The format itself (numpy only)

def test_bias_free_run_exports_zero_biases_computing_the_same_logits():
    cfg = ModelConfig(n_vocab=50, n_ctx=8, n_embd=16, n_head=2, n_layer=2, bias=False, compute_dtype="float32")
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(0))), nnx.Param)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: rng.standard_normal(a.shape).astype(np.float32), abstract)
    tensors = hf.to_tensors(jax.tree.map(np.asarray, nnx.to_pure_dict(params)), cfg)
    back_cfg = dataclasses.replace(hf.model_config(hf.hf_config(cfg, None), "export"), compute_dtype="float32")
    assert back_cfg.bias and not tensors["transformer.h.1.attn.c_attn.bias"].any()
    back_graphdef, abstract = nnx.split(nnx.eval_shape(lambda: GPT(back_cfg, rngs=nnx.Rngs(0))), nnx.Param)
    back_params = convert.as_state(abstract, hf.to_params(tensors, back_cfg, "export"))
    x = np.arange(16).reshape(2, 8) * 7 % 50
    np.testing.assert_allclose(forward(back_graphdef, back_params, x), forward(graphdef, params, x), rtol=0, atol=1e-6)


def test_gpt2_vocabulary_gets_gpt2_bpe_and_others_token_ids(synthetic_run, tmp_path):
    assert runs.load(synthetic_run).tokenizer.to_json() == {"kind": "ids", "vocab_size": 1000}
    src = write_hf_folder(tmp_path / "hf", n_layer=1, n_head=2, n_embd=8, vocab_size=50257, n_positions=16)
    run = runs.load(convert.from_hf(str(src), tmp_path / "run"))
    assert run.tokenizer.kind == "gpt2" and run.cfg.data.tokenizer == "gpt2" and run.step == 0
    tok = IdsTokenizer(1000)
    assert tok.encode(" 1 22\n999 ") == [1, 22, 999] and tok.decode([5, 7]) == " 5 7"
    for bad in ("ROMEO:", "1000"):
        with pytest.raises(TokenizerError):
            tok.encode(bad)


BAD = [  # (config.json changes, tensor change, file removed, the error says)
    ({"layer_norm_epsilon": 1e-6}, None, None, "layer_norm_epsilon=1e-06, but gptjax's GPT-2 uses LayerNorm eps"),
    ({"activation_function": "relu"}, None, None, "activation_function='relu'"),
    ({"model_type": "llama"}, None, None, "holds a 'llama' model, not GPT-2"),
    ({"n_inner": 100}, None, None, "n_inner=100, but gptjax's MLP is 4*n_embd=256"),
    ({"n_layer": 1}, None, None, "tensors its config.json does not explain: h.1."),
    ({"n_embd": 32}, None, None, "wte.weight has shape (1000, 64), but config.json implies (1000, 32)"),
    ({}, lambda t: t.pop("transformer.h.1.mlp.c_fc.bias"), None, "has no tensor 'h.1.mlp.c_fc.bias'"),
    ({}, lambda t: t.update({"lm_head.weight": t["transformer.wte.weight"] + 1}), None,
     "lm_head.weight differs from wte.weight; gptjax's GPT-2 ties them"),
    ({}, None, "model.safetensors", "has no model.safetensors or pytorch_model.bin"),
    ({}, None, "config.json", "has no config.json"),
    # Weights that are not floats: a cast to float32 would invent them (issue #28).
    ({}, lambda t: t.update({"transformer.h.0.mlp.c_fc.bias": t["transformer.h.0.mlp.c_fc.bias"].astype(np.int8)}),
     None, "h.0.mlp.c_fc.bias holds int8 values; only float weights convert"),
    ({}, lambda t: t.update({"transformer.ln_f.weight": t["transformer.ln_f.weight"] > 1}), None,
     "ln_f.weight holds bool values; only float weights convert"),
    # Sizes JSON allows but a model cannot have.
    *(({"n_embd": bad}, None, None, f"config.json has n_embd={json.dumps(bad)}, but it must be a positive integer")
      for bad in ("32", 2.0, True, [2], -64)),
    ({"n_inner": "256"}, None, None, 'config.json has n_inner="256", but it must be a positive integer'),
]


@pytest.mark.parametrize("changes, change_tensors, remove, message", BAD, ids=[b[-1][:30] for b in BAD])
def test_checkpoints_gptjax_cannot_reproduce_are_refused_in_one_line(tmp_path, changes, change_tensors, remove,
                                                                      message):
    folder = write_hf_folder(tmp_path / "bad", **SHAPE)
    (folder / "config.json").write_text(json.dumps({**json.loads((folder / "config.json").read_text()), **changes}))
    if change_tensors:
        tensors = load_file(folder / "model.safetensors")
        change_tensors(tensors)
        save_file(tensors, folder / "model.safetensors")
    if remove:
        (folder / remove).unlink()
    with pytest.raises(ConvertError) as e:
        convert.from_hf(str(folder), tmp_path / "run")
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()


def test_unknown_source_and_used_run_directory_are_refused(synthetic, synthetic_run):
    with pytest.raises(ConvertError, match="neither a local folder nor a hub model"):
        convert.from_hf("gpt3", synthetic_run.parent / "other")
    with pytest.raises(ConvertError, match="exists and is not empty"):
        convert.from_hf(str(synthetic), synthetic_run)


def test_a_file_or_read_only_folder_as_the_target_is_one_line_before_any_weight_is_read(synthetic, synthetic_run,
                                                                                        tmp_path):
    (tmp_path / "hostname").write_text("a file, as /etc/hostname is\n")
    with pytest.raises(ConvertError, match=f"RUN_DIR {tmp_path / 'hostname'} is a file, not a folder"):
        convert.from_hf(str(synthetic), tmp_path / "hostname")
    with pytest.raises(ConvertError, match=f"OUT {tmp_path / 'hostname'} is a file, not a folder"):
        convert.to_hf(synthetic_run, tmp_path / "hostname")
    assert (tmp_path / "hostname").read_text() == "a file, as /etc/hostname is\n"
    read_only = tmp_path / "ro"
    read_only.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(read_only)],
                      capture_output=True).returncode:
        read_only.chmod(0o500)  # not root: the mode bits are enough
    try:
        with pytest.raises(ConvertError, match=f"OUT {read_only / 'hf'} is not writable \\(Read-only file system|"
                                               f"Permission denied"):
            convert.to_hf(synthetic_run, read_only / "hf")
    finally:
        subprocess.run(["umount", "-l", str(read_only)], capture_output=True)


def test_a_pytorch_bin_that_is_not_a_state_dict_is_one_line(synthetic, tmp_path, torch):
    folder = tmp_path / "list"
    folder.mkdir()
    shutil.copy(synthetic / "config.json", folder)
    torch.save([torch.zeros(2), torch.ones(2)], folder / "pytorch_model.bin")  # weights_only loads a list too
    with pytest.raises(ConvertError, match="pytorch_model.bin holds a list, not a state dict of named tensors"):
        convert.from_hf(str(folder), tmp_path / "run")


# ---------------------------------------------------------------------------
# Runs: sampling, fine-tuning, resuming

def test_converted_run_fine_tunes_from_its_weights_and_loss_falls(synthetic_run, tmp_path):
    cfg = config.load("tiny", [f"run.out_dir={tmp_path / 'ft'}", f"train.init_from={synthetic_run}", "model.n_ctx=128",
                               "model.n_embd=64", "train.steps=10", "train.eval_every=10", "train.warmup_steps=0",
                               "train.batch_size=4"])
    last = trainer.train(cfg)
    rows = read_metrics(tmp_path / "ft")
    # Step 0 is evaluated on the converted weights themselves, not on a fresh initialisation.
    source = runs.load(synthetic_run)
    resolved, ds, mesh = trainer.setup(finetune.open_source(str(synthetic_run)).apply(cfg))
    params = jax.device_put(source.params, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    expected = trainer.evaluate(resolved, ds, mesh, jit_eval_step(source.graphdef), params)["val_loss"]
    assert rows[0]["step"] == 0 and rows[0]["val_loss"] == pytest.approx(expected, abs=1e-4)
    assert last["step"] == 10 and last["val_loss"] < rows[0]["val_loss"] - 1.0
    assert runs.load_config(tmp_path / "ft").model == dataclasses.replace(source.cfg.model, dropout=cfg.model.dropout)


@pytest.mark.parametrize("overrides, message", [
    ([], "has model.n_ctx=128, model.n_embd=64, but the config sets model.n_ctx=32, model.n_embd=32; remove those"),
    (["model.n_embd=64", "model.n_ctx=128", "data.tokenizer=gpt2"], "too small for data.tokenizer=gpt2"),
])
def test_init_from_refuses_a_config_that_contradicts_the_source(synthetic_run, tmp_path, overrides, message):
    cfg = config.load("tiny", [f"run.out_dir={tmp_path / 'ft'}", f"train.init_from={synthetic_run}", *overrides])
    with pytest.raises(ConfigError, match=message):
        trainer.train(cfg)
    assert not (tmp_path / "ft").exists()


def test_init_from_a_gpt2_bpe_model_needs_gpt2_bpe_data(tmp_path):
    # The tiny preset's shape, GPT-2's vocabulary.
    src = write_hf_folder(tmp_path / "hf", n_layer=2, n_head=4, n_embd=32, vocab_size=50257, n_positions=32)
    cfg = config.load("tiny", [f"run.out_dir={tmp_path / 'ft'}", f"train.init_from={src}"])
    with pytest.raises(ConfigError, match="trained with the gpt2 tokenizer, but the data uses char"):
        trainer.train(cfg)


def test_resuming_a_converted_run_starts_at_step_0_with_its_weights_and_a_fresh_optimizer(synthetic_run):
    # What train.py does with a converted run directory as run.out_dir (its own config.yaml works as the config).
    cfg = config.load(str(synthetic_run / "config.yaml"))
    cfg, _, mesh = trainer.setup(cfg)
    pieces = trainer.build(cfg, mesh)
    ckpts = Checkpoints(synthetic_run, read_only=True)
    try:
        assert ckpts.latest_step() == 0
        state = trainer.restore_state(ckpts, 0, pieces)
    finally:
        ckpts.close()
    assert int(state.step) == 0
    assert same_bits(*(dict(enumerate(map(np.asarray, jax.tree.leaves(p))))
                       for p in (state.params, runs.load(synthetic_run).params)))
    fresh = pieces.tx.init(state.params)
    assert jax.tree.structure(state.opt_state) == jax.tree.structure(fresh)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.opt_state), jax.tree.leaves(fresh)))


@pytest.mark.slow  # a fresh process, through the old module path
def test_cli_round_trip_is_bit_identical_and_sample_py_reads_the_run(tmp_path, capsys):
    import sample  # the entry point, run in this process to save a start-up

    src = write_hf_folder(tmp_path / "hf", n_layer=1, n_head=2, n_embd=8, vocab_size=50257, n_positions=16)
    result = subprocess.run([sys.executable, "-m", "gptjax.convert", "from-hf", str(src), str(tmp_path / "run")],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0 and "sample with python sample.py" in result.stdout, result.stderr
    assert sample.main([str(tmp_path / "run"), "--prompt", "Hello", "--temperature", "0", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("Hello")
    assert convert.main(["to-hf", str(tmp_path / "run"), str(tmp_path / "out")]) == 0
    assert same_bits(load_file(src / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors"))
    exported = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (exported["vocab_size"], exported["n_embd"], exported["n_positions"], exported["eos_token_id"]) == (
        50257, 8, 16, 50256)
    capsys.readouterr()
    assert convert.main(["from-hf", str(tmp_path / "missing"), str(tmp_path / "run2")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: {str(tmp_path / 'missing')!r} is neither a local folder nor a hub model "
        f"(gpt2, gpt2-medium, gpt2-large, gpt2-xl)"]
