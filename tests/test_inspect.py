"""Looking inside: the parameter table, next-token probabilities, attention maps, embeddings, the logit lens, the CLI."""

import argparse
import functools
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from gptjax import config
from gptjax.data.tokenizer import CharTokenizer
from gptjax.look import analysis, render, views
from gptjax.look import cli as inspect
from gptjax.model import GPT, abstract_model, count_params
from gptjax.train import optim
from gptjax.train.checkpoint import Checkpoints
from gptjax.train.trainer import write_run_files
from tests.conftest import ROOT

PRESETS = sorted(p.stem for p in config.CONFIG_DIR.glob("*.yaml"))
# Four hand-set token directions (the rest of the width is zero): K - M + W points exactly
# along Q, while X is nearer to K - M + W in Euclidean distance but not in angle.
CHARS = list("KMWQXYZ ")
VECTORS = {"K": [1, 1, 0, 0], "M": [1, 0, 0, 0], "W": [0, 0, 1, 0], "Q": [0, 2, 2, 0], "X": [0, 1, 0.8, 0],
           "Y": [0, 0, 0, 1], "Z": [-1, 0, 0, 0], " ": [0, 0, 0, -1]}


def randomized(cfg, seed=0) -> GPT:
    """A model whose biases and LayerNorm gains are random too (they start at 0 and 1), so
    recomputations that dropped a bias or a gain would not agree by accident."""
    model = GPT(cfg, rngs=nnx.Rngs(seed))
    params = nnx.state(model, nnx.Param)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    nnx.update(model, jax.tree.unflatten(tree, [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]))
    return model


# One shape for every model here (the hand-set one and the run directory's too), so each
# operation compiles once for the whole file.
CFG = config.ModelConfig(n_vocab=len(CHARS), n_ctx=16, n_embd=8, n_head=2, n_layer=2)
V = len(CHARS)


@pytest.fixture(scope="module")
def model():
    return randomized(CFG)


IDS = [3, 1, 4, 1, 5, 7, 2, 6, 5, 3]


# ---------------------------------------------------------------------------
# params


@functools.cache
def preset_groups(name: str):
    """A preset's model config (n_vocab resolved as the CLI does) and parameter groups, with the
    real count of its abstract model: shapes only, so gpt3 allocates nothing (but takes seconds)."""
    cfg, _ = views.model_config(argparse.Namespace(config=name, targets=[]))
    abstract = abstract_model(cfg)
    return cfg, analysis.param_groups(abstract), count_params(abstract)


@pytest.mark.parametrize("name", PRESETS)
def test_params_table_totals_equal_the_real_parameter_count(name):
    cfg, groups, real = preset_groups(name)
    total = sum(g.count for g in groups)
    assert total == real == cfg.n_params
    outside = sum(g.count for g in groups if g.layer is None)
    assert outside + sum(analysis.layer_totals(groups).values()) == total
    assert len(analysis.layer_totals(groups)) == cfg.n_layer


def test_params_gpt3_shows_617558016_weights_in_W_E_and_175B_in_all():
    cfg, groups, _ = preset_groups("gpt3")
    lines = render.params_text(cfg, "config gpt3", groups).splitlines()
    w_e = next(line for line in lines if line.startswith("token embedding W_E"))
    assert "50257 x 12288" in w_e and "617,558,016" in w_e
    assert lines[-1] == "174,604,259,328 parameters (175B)"  # GPT-3, as it is named
    assert any(line.startswith("unembedding W_U (tied") and "0 (shares W_E)" in line for line in lines)
    assert any(line.startswith("layers 1-95: each the same as layer 0") for line in lines)
    every = render.params_text(cfg, "config gpt3", groups, all_layers=True).splitlines()
    assert sum(line.startswith("layer 95: ") for line in every) == 8  # LN, Q, K, V, O, LN, up, down


# ---------------------------------------------------------------------------
# next


def test_next_probabilities_are_softmax_of_the_forward_pass(model):
    logits_v = model(jnp.asarray([IDS]))[0, -1]  # the model's own forward pass
    ours = analysis.next_logits(model, IDS, vocab_size=V)
    for t in (0.25, 0.7, 1.0, 3.0):
        probs = analysis.softmax_at(ours, t)
        np.testing.assert_allclose(probs, jax.nn.softmax(logits_v / t), rtol=1e-5, atol=1e-7)
        assert abs(probs.sum() - 1) < 1e-12


def test_temperature_zero_puts_all_mass_on_the_argmax(model):
    logits_v = analysis.next_logits(model, IDS, vocab_size=V)
    argmax = int(np.argmax(logits_v))
    np.testing.assert_array_equal(analysis.softmax_at(logits_v, 0), np.eye(V)[argmax])
    assert analysis.softmax_at(logits_v, 1e-4)[argmax] > 1 - 1e-9  # and it is the limit of small T
    assert analysis.top_tokens(logits_v, 3)[0] == argmax
    np.testing.assert_array_equal(analysis.softmax_at(np.array([1.0, 3.0, 3.0]), 0), [0, 0.5, 0.5])


# ---------------------------------------------------------------------------
# attention and the residual stream


def test_attention_weights_reproduce_the_models_attention_output(model):
    # The weights come through the model's own pass (its tap); applied to the layer's values they
    # give what its fast kernel, which never returns them, gives.
    xs = analysis.residual_stream(model, jnp.asarray([IDS]))
    for block, x_btd, probs_hts in zip(model.blocks, xs, analysis.attention_maps(model, IDS)):
        attn = block.attn
        h_btd = block.ln_1(x_btd)
        v_bshk = jnp.einsum("btd,dhk->bthk", h_btd, attn.wv_dhk[...]) + attn.bv_hk[...]
        out_btd = jnp.einsum("hts,bshk,hkd->btd", probs_hts, v_bshk, attn.wo_hkd[...]) + attn.bo_d[...]
        np.testing.assert_allclose(out_btd, attn(h_btd)[0], atol=2e-5)


def test_residual_stream_is_the_models_own(model):
    xs = analysis.residual_stream(model, jnp.asarray([IDS]))
    assert len(xs) == model.cfg.n_layer + 1
    np.testing.assert_allclose(model.ln_f(xs[-1]), model.hidden(jnp.asarray([IDS]))[0], atol=1e-5)


def test_attention_maps_are_causal_and_rows_sum_to_one(model):
    attn_lhts = analysis.attention_maps(model, IDS)
    T = len(IDS)
    assert attn_lhts.shape == (2, 2, T, T)
    assert np.all(attn_lhts[..., np.triu_indices(T, k=1)[0], np.triu_indices(T, k=1)[1]] == 0)
    np.testing.assert_allclose(attn_lhts.sum(-1), 1, atol=1e-6)
    assert np.all(attn_lhts[..., 0, 0] == 1)  # the first token can only attend to itself
    assert not np.allclose(attn_lhts[:, :, -1], 1 / T)  # a real map, not the uniform one


def test_logit_lens_starts_at_the_embeddings_and_ends_at_the_output(model):
    lens_ltv = analysis.logit_lens(model, IDS)
    assert lens_ltv.shape == (3, len(IDS), V)
    np.testing.assert_allclose(lens_ltv[-1], model(jnp.asarray([IDS]))[0], atol=1e-4)
    w_vd = model.wte_vd[...]
    embedded = model.ln_f((w_vd[jnp.asarray(IDS)] + model.wpe_td[...][:len(IDS)])[None])[0]
    np.testing.assert_allclose(lens_ltv[0], embedded @ w_vd.T, atol=1e-4)


# ---------------------------------------------------------------------------
# embeddings


def hand_set_model():
    model = randomized(CFG, seed=5)
    w_vd = np.zeros((V, CFG.n_embd), np.float32)
    for i, c in enumerate(CHARS):
        w_vd[i, :4] = VECTORS[c]
    model.wte_vd[...] = jnp.asarray(w_vd)
    return model


def test_analogy_returns_the_hand_computed_nearest_neighbour():
    tok, w_vd = CharTokenizer(CHARS), np.asarray(hand_set_model().wte_vd[...])
    found = analysis.analogy(w_vd, tok.encode("K"), tok.encode("M"), tok.encode("W"), k=3)
    # K - M + W = (0, 1, 1, 0): Q = (0, 2, 2, 0) has cosine 1; X = (0, 1, .8, 0) has 1.8 / sqrt(1.64 * 2).
    assert [tok.decode([i]) for i, _ in found[:2]] == ["Q", "X"]
    assert found[0][1] == pytest.approx(1.0) and found[1][1] == pytest.approx(1.8 / np.sqrt(3.28))
    assert not {tok.decode([i]) for i, _ in found} & {"K", "M", "W"}  # A, B and C are left out
    nearest = analysis.cosine_nearest(w_vd, analysis.word_vector(w_vd, tok.encode("QX")), k=2, exclude=[])
    assert nearest[0][0] == tok.encode("Q")[0]  # a word of several tokens stands for their mean


# ---------------------------------------------------------------------------
# The command line, on a run directory holding the hand-set model


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("inspect") / "run"
    model = hand_set_model()
    cfg = config.load("tiny", [f"run.out_dir={run}", *(f"model.{k}={getattr(CFG, k)}" for k in
                                                        ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer"))])
    write_run_files(run, cfg, CharTokenizer(CHARS))
    params = nnx.state(model, nnx.Param)
    ckpts = Checkpoints(run)
    ckpts.save(1, params, optim.make(cfg.train).init(params), {"step": 1}, None)
    ckpts.close()
    return run, model


def cli(capsys, *args) -> tuple[int, str, str]:
    code = inspect.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_next_prints_the_models_probabilities_side_by_side(run_dir, capsys):
    run, model = run_dir
    code, out, _ = cli(capsys, "next", run, "--prompt", "KMW Q", "--temperature", "0", "1", "2", "--top", "8")
    assert code == 0
    rows = [re.split(r"\s{2,}", line.strip()) for line in out.splitlines()[2:10]]  # "' '" holds one space
    logits_v = model(jnp.asarray([CharTokenizer(CHARS).encode("KMW Q")]))[0, -1]
    for row in rows:
        i = int(row[2])
        printed = np.array(row[4:7], float)  # rank, token, id, logit, then p at T = 0, 1, 2
        expected = [float(i == jnp.argmax(logits_v)), jax.nn.softmax(logits_v)[i], jax.nn.softmax(logits_v / 2)[i]]
        np.testing.assert_allclose(printed, expected, atol=6e-5)
    assert out.splitlines()[-1].split()[-3:] == ["1.0000"] * 3  # top 8 of 8 tokens: all the mass


def test_cli_attention_and_lens_write_pngs_that_open(run_dir, tmp_path, capsys):
    run, _ = run_dir
    for args, png, said in ((["attention"], "grid.png", "layers 0-1 x heads 0-1"),
                            (["attention", "--layer", "1", "--head", "0"], "one.png", "layer 1 x head 0"),
                            (["lens"], "lens.png", "pos  token  embed")):
        code, out, err = cli(capsys, args[0], run, "--prompt", "KMWQ XY", *args[1:], "--out", tmp_path / png)
        assert code == 0 and said in out, err
        with Image.open(tmp_path / png) as image:
            image.verify()
            assert image.format == "PNG" and min(image.size) > 100
    assert len(out.splitlines()) == 2 + len("KMWQ XY") + 1  # the lens table: a row per position, then the file


def test_cli_embeddings_and_params_on_a_run(run_dir, capsys):
    run, model = run_dir
    code, out, _ = cli(capsys, "embeddings", run, "--analogy", "K", "M", "W", "--k", "2")
    assert code == 0 and out.splitlines()[2].split()[:2] == ["1", "'Q'"]
    code, out, _ = cli(capsys, "params", run)
    assert code == 0 and out.splitlines()[-1].startswith(f"{count_params(model):,} parameters")


@pytest.mark.parametrize("args, message", [
    (["attention", "{run}", "--prompt", "KM", "--layer", "2"], "--layer 2 does not exist: the model has 2 layers"),
    (["attention", "{run}", "--prompt", "KM", "--head", "-1"], "--head -1 does not exist"),
    (["attention", "{run}", "--prompt", "KM", "--out", "{run}/no/such/dir/a.png"], "does not exist; create it"),
    (["embeddings", "{run}", "--nearest", "k"], "--nearest 'k': text has 1 character(s) outside the char vocab"),
    (["embeddings", "{run}"], "embeddings takes --nearest TOKEN or --analogy A B C"),
    (["next", "{run}", "--temperature", "-1"], "--temperature must be >= 0"),
    (["next", "{run}", "--top", "9"], "--top must be between 1 and the vocabulary size 8"),
    (["lens", "{run}/missing", "--prompt", "K"], "is not a run directory"),
    (["params"], "params takes one run directory, or --config NAME"),
])
def test_bad_input_is_one_line_and_exit_2(run_dir, capsys, args, message):
    code, _, err = cli(capsys, *[a.replace("{run}", str(run_dir[0])) for a in args])
    assert code == 2 and message in err
    assert err.count("\n") == 1 and err.startswith("error:")


@pytest.mark.slow  # a fresh process, through `python -m gptjax`
def test_module_entry_point_reports_bad_input_in_one_line(run_dir):
    result = subprocess.run([sys.executable, "-m", "gptjax", "inspect", "attention", str(run_dir[0]), "--prompt", "K",
                             "--layer", "9"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --layer 9 does not exist: the model has 2 layers, numbered 0 to 1"
