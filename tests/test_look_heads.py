"""Looking deeper: the cached and patched forward pass, head knock-outs, head roles, logit attribution, the report."""

import contextlib
import dataclasses
import io
import re
import shutil
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from gptjax import config
from gptjax.data.tokenizer import ASSETS, CharTokenizer
from gptjax.look import attribution, commands, heads, hooks, report
from gptjax.look import cli as inspect
from gptjax.model import GPT
from gptjax.train import optim
from gptjax.train.checkpoint import Checkpoints
from gptjax.train.trainer import write_run_files
from tests.circuits import HAND, T, V, induction_model
from tests.conftest import ROOT, run_main
from tests.test_inspect import randomized

RAND = config.ModelConfig(n_vocab=11, n_ctx=12, n_embd=16, n_head=4, n_layer=3)
model_forward = nnx.jit(lambda model, idx_bt: model(idx_bt))  # eager, every op would compile on its own


@pytest.fixture(scope="module")
def rand():
    """One model with random biases and LayerNorm gains too (a dropped bias or gain would show), for the module."""
    return randomized(RAND)


@pytest.fixture(scope="module")
def hand():
    return induction_model()


def repeated(batch=8, seed=0):
    idx_bt = heads.repeated_sequences(V, T, [0], batch, seed)
    return [(idx_bt[:, :-1], idx_bt[:, 1:])], idx_bt


# ---------------------------------------------------------------------------
# The forward pass


def test_forward_with_no_patch_is_the_models_own(rand):
    model = rand
    idx_bt = jax.random.randint(jax.random.PRNGKey(0), (2, 12), 0, 11)
    logits_btv, cache = hooks.run_with_cache(model, idx_bt)
    np.testing.assert_allclose(logits_btv, model_forward(model, idx_bt), atol=1e-5)
    assert cache.resid_lbtd.shape == (4, 2, 12, 16) and cache.z_lbthk.shape == (3, 2, 12, 4, 4)
    # The stream is the sum of its parts: embeddings plus every sublayer's output.
    parts = cache.tok_btd + cache.pos_td + cache.attn_out_lbtd.sum(0) + cache.mlp_out_lbtd.sum(0)
    np.testing.assert_allclose(cache.resid_lbtd[-1], parts, atol=1e-5)
    # Mean ablation's fills: each head's and sublayer's output averaged over batch and positions.
    means = heads.activation_means(model, [(idx_bt[:1], None), (idx_bt[1:], None)])
    for mean, full in zip(means, (cache.z_lbthk, cache.attn_out_lbtd, cache.mlp_out_lbtd)):
        np.testing.assert_allclose(mean, full.mean((1, 2)), atol=1e-6)


def test_patching_a_head_with_another_runs_output_moves_the_logits_there(rand):
    model = rand
    a_bt, b_bt = (jax.random.randint(jax.random.PRNGKey(i), (1, 12), 0, 11) for i in (1, 2))
    _, cache_b = hooks.run_with_cache(model, b_bt)
    patch = hooks.Patch.identity(model.cfg)
    for h in range(4):
        patch = patch.patch_head(0, h, cache_b)
    _, cache_a = hooks.run_with_cache(model, a_bt, patch)
    # Every head of layer 0 patched from b: layer 0's attention output is b's, and the rest is not.
    np.testing.assert_allclose(cache_a.attn_out_lbtd[0], cache_b.attn_out_lbtd[0], atol=1e-6)
    assert not np.allclose(cache_a.attn_out_lbtd[1], cache_b.attn_out_lbtd[1], atol=1e-3)


# ---------------------------------------------------------------------------
# Knock-outs and roles, on the hand-built circuit


@pytest.mark.parametrize("ablation", heads.ABLATIONS)
def test_knocking_out_the_circuit_raises_the_loss_and_zeroed_parts_change_nothing(hand, ablation):
    batches, _ = repeated()
    k = heads.knockouts(hand, batches, ablation)
    # Every prediction of the repeat goes through the previous-token head, then the induction head.
    assert k.heads_lh[0, 0] > 1.0 and k.heads_lh[1, 0] > 0.5 and k.attn_l[0] > 1.0
    # Heads whose W_O is zero and MLPs whose weights are: their knock-out is the same program's
    # same arithmetic, so the loss is the same to the last bit.
    assert k.heads_lh[0, 1] == 0.0 and k.heads_lh[1, 1] == 0.0
    assert (k.mlp_l == 0.0).all()
    if ablation == "zero":  # with the other head of the layer silent, the layer is its one head
        assert k.attn_l[1] == k.heads_lh[1, 0]


def test_hand_built_heads_score_highest_on_their_roles(hand):
    _, idx_bt = repeated(batch=4, seed=1)
    scores = heads.role_scores(hand, idx_bt)
    best = {role: np.unravel_index(s.argmax(), s.shape) for role, s in scores.items()}
    assert best == {"previous-token": (0, 0), "duplicate-token": (0, 1), "induction": (1, 0)}
    assert scores["induction"][1, 0] > 0.95 and np.delete(scores["induction"].ravel(), 2).max() < 0.2


def test_repeated_sequences_repeat_distinct_tokens_after_the_start_token():
    idx_bt = heads.repeated_sequences(65, 64, [0], 3, seed=0)
    assert idx_bt.shape == (3, 63) and (idx_bt[:, 0] == 0).all()
    first, second = idx_bt[:, 1:32], idx_bt[:, 32:]
    assert (first == second).all() and all(len(set(row)) == 31 and 0 not in row for row in first)


# ---------------------------------------------------------------------------
# Direct logit attribution


@pytest.mark.parametrize("position, target", [(-1, 3), (4, 0), (9, 10)])
def test_attributions_sum_to_the_logit_with_the_final_norm_frozen(rand, position, target):
    model = rand
    ids = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
    a = attribution.attribute(model, ids, target, position)
    assert a.logit == pytest.approx(float(model_forward(model, jnp.asarray([ids]))[0, position, target]), abs=1e-5)
    # Exact up to float rounding: ln_f is linear in the stream once σ is frozen at its value.
    assert a.total() == pytest.approx(a.logit, abs=1e-5)
    assert sum(v for _, v in a.rows()) == pytest.approx(a.logit, abs=1e-5)
    assert a.final_bias != 0 and (a.attn_bias_l != 0).all()


def test_the_induction_head_is_what_raises_the_repeated_tokens_logit(hand):
    _, idx_bt = repeated(batch=1, seed=2)
    ids = list(idx_bt[0])
    t = 10  # in the repeat: the next token is the one that followed ids[t] the first time
    a = attribution.attribute(hand, ids[:t + 1], ids[t + 1])
    parts = dict(a.rows())
    assert max(parts, key=parts.get) == "layer 1 head 0" and parts["layer 1 head 0"] > 5


# ---------------------------------------------------------------------------
# The command line and the report, on a run directory holding the hand-built circuit


def save_run(run_dir, cfg, model, tokenizer):
    write_run_files(run_dir, cfg, tokenizer)
    params = nnx.state(model, nnx.Param)
    ckpts = Checkpoints(run_dir)
    ckpts.save(1, params, optim.make(cfg.train).init(params), {"step": 1}, None)
    ckpts.close()


@pytest.fixture(scope="module")
def hand_run(tmp_path_factory, hand):
    # Its data: the start token 'a', then the other seven letters in a random order, twice; over and over.
    folder = tmp_path_factory.mktemp("heads")
    letters = "abcdefgh"
    rows = heads.repeated_sequences(V, T, [0], 400, seed=3)
    (folder / "repeats.txt").write_text("".join(letters[i] for i in rows.ravel()))
    overrides = [f"model.{k}={getattr(HAND, k)}" for k in ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer")]
    cfg = config.load("tiny", [f"run.out_dir={folder / 'run'}", "model.bias=false", f"data.source={folder / 'repeats.txt'}",
                               *overrides])
    save_run(folder / "run", cfg, hand, CharTokenizer(list(letters)))
    return folder / "run"


def cells(out: str, first: str) -> list[list[str]]:
    """The rows of a printed table whose header starts with `first`."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(first))
    return [line.split() for line in lines[start + 1:] if line and line.split()[0].isdigit()]


def test_cli_heads_prints_the_runs_knockouts_and_roles_finds_the_circuit(hand, hand_run, tmp_path):
    result = run_main(inspect.main, ["heads", str(hand_run), "--out", str(tmp_path / "heads.png")])
    assert result.returncode == 0, result.stderr
    run, _ = hooks.load(hand_run)
    k = heads.knockouts(hand, commands.val_batches(run, run.cfg.train.eval_batches))
    assert f"loss {k.base:.4f} with nothing knocked out" in result.stdout
    rows = np.array([[float(x) for x in r[1:]] for r in cells(result.stdout, "layer")])  # heads | attention | MLP
    np.testing.assert_allclose(rows, np.concatenate([k.heads_lh, k.attn_l[:, None], k.mlp_l[:, None]], 1), atol=1e-4)
    assert (rows[:, 1] == 0).all() and (rows[:, 3] == 0).all()  # silent heads and MLPs: exactly nothing
    result = run_main(inspect.main, ["roles", str(hand_run), "--sequences", "4", "--out", str(tmp_path / "roles.png")])
    assert result.returncode == 0, result.stderr
    scores = {(int(r[0]), int(r[1])): [float(x) for x in r[2:]] for r in cells(result.stdout, "layer")}
    for column, head in enumerate([(0, 0), (0, 1), (1, 0)]):  # previous-token, duplicate-token, induction
        assert max(scores, key=lambda k: scores[k][column]) == head
    for png in ("heads.png", "roles.png"):
        with Image.open(tmp_path / png) as image:
            image.verify()
            assert image.format == "PNG" and min(image.size) > 100


def test_cli_attribute_names_the_induction_head(hand_run):
    result = run_main(inspect.main, ["attribute", str(hand_run), "--prompt", "acbhgfedcb", "--target", "h"])
    assert result.returncode == 0, result.stderr
    rows = [line.rsplit(None, 1) for line in result.stdout.splitlines()[2:]]
    parts = {name.strip(): float(v) for name, v in rows}
    assert max(parts, key=parts.get) == "layer 1 head 0"
    logit, total = (float(x) for x in re.findall(r"logit (\S+), parts sum to (\S+) ", result.stdout)[0])
    assert total == pytest.approx(logit, abs=1e-3) and "σ frozen" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["heads", "{run}", "--batches", "0"], "--batches must be at least 1, got 0"),
    (["heads", "{run}", "--ablation", "half"], "argument --ablation: invalid choice: 'half'"),
    (["heads", "{run}", "--out", "{run}/heads.jpg"], "give a file name ending in .png"),
    (["roles", "{run}", "--sequences", "-2"], "--sequences must be at least 1"),
    (["attribute", "{run}", "--prompt", "ab", "--target", "bc"], "--target 'bc' is 2 tokens; give exactly one"),
    (["attribute", "{run}", "--prompt", "ab", "--target", "z"], "--target 'z': text has 1 character(s) outside"),
    (["report", "{run}", "--prompt", "ab", "--out", "{run}/r.txt"], "give a file name ending in .html"),
    (["report", "{run}", "--prompt", "ab", "--out", "{run}/no/r.html"], "does not exist; create it"),
    (["heads", "{run}/missing"], "is not a run directory"),
])
def test_bad_input_is_one_line_and_exit_2_and_leaves_the_run_alone(hand_run, args, message):
    before = sorted((p.relative_to(hand_run), p.stat().st_mtime_ns) for p in hand_run.rglob("*"))
    result = run_main(inspect.main, [a.replace("{run}", str(hand_run)) for a in args])
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error:")
    assert sorted((p.relative_to(hand_run), p.stat().st_mtime_ns) for p in hand_run.rglob("*")) == before


def test_report_refuses_a_prompt_longer_than_it_draws(hand_run, tmp_path, monkeypatch):
    monkeypatch.setattr(report, "MAX_TOKENS", 4)
    result = run_main(inspect.main, ["report", str(hand_run), "--prompt", "abcdef", "--out", str(tmp_path / "r.html")])
    assert result.returncode == 2 and not (tmp_path / "r.html").exists()
    assert result.stderr == "error: --prompt is 6 tokens; the report draws every head's attention over at most 4, " \
                            "so give a shorter prompt\n"


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(tmp_path, *args: str) -> str:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}"]
    result = subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install -y chromium; .ci/run installs it)")
def test_report_is_one_file_that_renders_every_view_in_chromium(hand_run, tmp_path):
    out = tmp_path / "report.html"
    result = run_main(inspect.main, ["report", str(hand_run), "--prompt", "acbhgfedcb", "--sequences", "4",
                                     "--out", str(out)])
    assert result.returncode == 0, result.stderr
    page = out.read_text()
    # Self-contained: nothing is fetched, every picture is inline.
    assert not re.search(r"""(src|href)=["'](?!data:)""", page) and page.count('src="data:image/png;base64,') == 2
    dom = chromium(tmp_path, "--dump-dom", out.as_uri())
    assert '<body data-ready="yes">' in dom  # the script ran to its end
    for view in ("knockouts", "roles", "attribution", "attention"):
        assert f'<section id="{view}">' in dom
    # The script drew the head picker, the prompt's tokens, and the whole map of the first head.
    assert dom.count("<button") == HAND.n_layer * HAND.n_head
    assert re.search(r'<div id="tokens">(<span[^>]*>[^<]*</span>){10}</div>', dom)
    assert dom.count('<td title="query ') == 10 * 11 // 2  # the causal half of a 10 x 10 map
    assert '<td title="query 0 &quot;a&quot; -&gt; key 0 &quot;a&quot;: 1.000"' in dom
    assert "layer 0, head 0: where position 9" in dom
    # A view named in the address: the induction head from the query "c" at position 8 (the
    # second "c" of "acbhgfedcb") attends to the "b" after the first "c", position 2.
    dom = chromium(tmp_path, "--dump-dom", out.as_uri() + "#layer=1&head=0&query=8")
    assert "layer 1, head 0: where position 8" in dom
    weights = [float(w) for w in re.findall(r'title="position \d+: attention ([\d.]+)"', dom)]
    assert len(weights) == 10 and int(np.argmax(weights)) == 2 and weights[2] > 0.9
    chromium(tmp_path, "--window-size=1000,3000", f"--screenshot={tmp_path / 'report.png'}", out.as_uri())
    with Image.open(tmp_path / "report.png") as image:
        assert image.size == (1000, 3000)


# ---------------------------------------------------------------------------
# The docs' notebook example (docs/inspect.md)


def test_docs_notebook_example_runs(tmp_path):
    text = (ROOT / "docs/inspect.md").read_text()
    example = re.search(r"## From a notebook\n.*?```python\n(.*?)```", text, re.S).group(1)
    cfg = config.load("tiny", [f"run.out_dir={tmp_path / 'run'}"])
    tok = CharTokenizer.fit((ASSETS / "tinyshakespeare.txt").read_text(encoding="utf-8"))
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, n_vocab=tok.vocab_size))
    save_run(tmp_path / "run", cfg, GPT(cfg.model, rngs=nnx.Rngs(0)), tok)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(example.replace("runs/shakespeare_char_cpu", str(tmp_path / "run")), {})
    assert "knocking out layer 1 head 3 moves the last logits by" in out.getvalue()
