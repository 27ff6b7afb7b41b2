"""The optimizer levers (gptjax/train/optim_levers.py): each off by default, leaving every optimizer's steps and
state as they were, and each computing what it says: Polar Express, NorMuon, cautious weight decay."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from optax.contrib import MuonDimensionNumbers
from optax.contrib._muon import MuonState, orthogonalize_via_newton_schulz

from gptjax.config import ConfigError, ModelConfig, TrainConfig
from gptjax.model import GPT
from gptjax.train import optim, trainer
from gptjax.train.checkpoint import Checkpoints
from gptjax.train.optim_levers import NorMuonState, muon_coeffs, neuron_axes, polar_express_coeffs, scale_by_neuron_rms

from .conftest import run_in_process

CFG = ModelConfig(n_vocab=23, n_ctx=8, n_embd=16, n_head=2, n_layer=1, tie_embeddings=False)
LEVERS = {"muon_iteration": "polar_express", "normuon": True, "cautious_wd": True}

# Three steps of each optimizer at the defaults, by the code before the levers (commit 10fa0e9): the summed
# |change| of every parameter, and the optimizer state's leaf count.
BEFORE = {"adamw": (42.623913540861395, 44), "muon": (32.985525519739895, 41), "lion": (46.189848179557885, 23)}

# modded-nanogpt's polar_express_coeffs (train_gpt.py; "num_iters=5, safety_factor=2e-2, cushion=2").
MODDED_NANOGPT_PE = [
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
]


def random_like(tree, seed, scale=1.0):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(treedef, [scale * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def params():
    return random_like(nnx.to_pure_dict(nnx.state(GPT(CFG, rngs=nnx.Rngs(0)), nnx.Param)), 4, 0.5)


def steps(cfg: TrainConfig, start, n=3):
    tx = optim.make(cfg)
    state, p = tx.init(start), start
    with jax.default_matmul_precision("highest"):  # a GPU's float32 matmuls too (not TF32), as the CPU's
        for t in range(n):
            updates, state = tx.update(random_like(start, 30 + t), state, p)
            p = optax.apply_updates(p, updates)
    return p, state


def by_name(tree) -> dict:
    return {jax.tree_util.keystr(path): np.asarray(x) for path, x in jax.tree_util.tree_leaves_with_path(tree)}


# Off by default

def test_every_lever_is_off_by_default():
    cfg = TrainConfig()
    assert (cfg.muon_iteration, cfg.normuon, cfg.cautious_wd) == ("newton_schulz", False, False)


@pytest.mark.parametrize("name", list(BEFORE))
def test_default_steps_and_state_are_those_before_the_levers(name):
    cfg = TrainConfig(optimizer=name, lr=0.01, warmup_steps=1, lr_decay_steps=6, weight_decay=0.3)
    start = params()
    end, state = steps(cfg, start)
    change = sum(float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).sum())
                 for a, b in zip(jax.tree.leaves(end), jax.tree.leaves(start)))
    assert change == pytest.approx(BEFORE[name][0], rel=1e-6)
    assert len(jax.tree.leaves(state)) == BEFORE[name][1]
    if name != "muon":  # the optax alias it was built with, its state tree exactly
        alias = optax.adamw if name == "adamw" else optax.lion
        old = optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                          alias(optim.schedule(cfg), b1=cfg.beta1, b2=cfg.beta2, weight_decay=cfg.weight_decay,
                                mask=optim.decay_mask, **({"eps": cfg.eps} if name == "adamw" else {})))
        assert jax.tree.structure(state) == jax.tree.structure(old.init(start))


@pytest.mark.parametrize("name", list(BEFORE))
def test_cautious_wd_keeps_the_state_tree_so_a_resume_may_switch_it(name):
    start = params()
    trees = [jax.tree.structure(optim.make(TrainConfig(optimizer=name, cautious_wd=c)).init(start))
             for c in (False, True)]
    assert trees[0] == trees[1]


# Polar Express

def test_polar_express_coefficients_are_derived_and_equal_modded_nanogpts():
    np.testing.assert_allclose(polar_express_coeffs(), MODDED_NANOGPT_PE, rtol=1e-12, atol=1e-12)
    # The safety margin of the input's normalisation (1.02) is folded into the first quintic only.
    a, b, c = MODDED_NANOGPT_PE[0]
    np.testing.assert_allclose(muon_coeffs("polar_express")[0], (a / 1.02, b / 1.02**3, c / 1.02**5), rtol=1e-12)
    assert muon_coeffs("polar_express")[1:] == polar_express_coeffs()[1:]
    assert muon_coeffs("newton_schulz") == (3.4445, -4.7750, 2.0315)


def test_polar_express_gets_singular_values_closer_to_1_than_newton_schulz_in_5_steps():
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.normal(size=(96, 32)))
    v, _ = np.linalg.qr(rng.normal(size=(32, 32)))
    g = jnp.asarray((u * np.logspace(-2, 0, 32)) @ v.T, jnp.float32)  # condition number 100
    worst = {}
    for iteration in ("newton_schulz", "polar_express"):
        o = orthogonalize_via_newton_schulz(g, jnp.asarray(muon_coeffs(iteration)), 5)
        worst[iteration] = np.abs(np.linalg.svd(np.asarray(o, np.float64), compute_uv=False) - 1).max()
    assert worst["polar_express"] < 0.15 and worst["polar_express"] < worst["newton_schulz"] / 2, worst


def test_polar_express_runs_in_muon_and_its_coefficients_live_in_the_optimizer_state():
    start = params()
    base = TrainConfig(optimizer="muon", warmup_steps=0, weight_decay=0.0)
    (ns, _), (pe, state) = (steps(dataclasses.replace(base, muon_iteration=i), start, 1)
                            for i in ("newton_schulz", "polar_express"))
    muon_state = next(s for s in jax.tree.leaves(state, is_leaf=lambda s: isinstance(s, MuonState))
                      if isinstance(s, MuonState))
    np.testing.assert_allclose(muon_state.ns_coeffs, muon_coeffs("polar_express"), rtol=1e-6)
    changed = [k for k, x in by_name(pe).items() if not np.array_equal(x, by_name(ns)[k])]
    assert changed and all("bq_hk" not in k and "scale" not in k for k in changed)  # only the matrices moved


# NorMuon

def one_update(cfg: TrainConfig, start):
    """The first step's update direction of every parameter: constant lr 1, no decay."""
    cfg = dataclasses.replace(cfg, lr=1.0, muon_lr=1.0, min_lr=1.0, warmup_steps=0, weight_decay=0.0, grad_clip=0)
    end, state = steps(cfg, start, 1)
    return {k: by_name(start)[k] - x for k, x in by_name(end).items()}, state


def test_normuon_evens_out_each_neurons_update_rms_and_keeps_muons_size():
    start = params()
    muon, _ = one_update(TrainConfig(optimizer="muon"), start)
    normuon, state = one_update(TrainConfig(optimizer="muon", normuon=True), start)
    dims = dict(zip(by_name(start), jax.tree.leaves(optim.muon_dims(start), is_leaf=lambda x: x is None
                                                     or hasattr(x, "reduction_axis"))))
    checked = 0
    for key, d in dims.items():
        if d is None:
            np.testing.assert_array_equal(normuon[key], muon[key])  # AdamW's part: untouched
            continue
        averaged, _ = neuron_axes(normuon[key], d)
        new, old = (np.sqrt(np.mean(np.square(u[key]), axis=averaged)) for u in (normuon, muon))
        assert np.ptp(new) < 1e-5 * new.mean(), key  # equal across neurons
        assert np.ptp(old) > 1e-2 * old.mean(), key  # which Muon's alone were not
        np.testing.assert_allclose(np.linalg.norm(normuon[key]), np.linalg.norm(muon[key]), rtol=1e-5)
        checked += 1
    assert checked >= 4  # W_Q, W_K, W_V, W_O, W_up, W_down
    nu = [s for s in jax.tree.leaves(state, is_leaf=lambda s: isinstance(s, NorMuonState))
          if isinstance(s, NorMuonState)]
    assert len(nu) == 1 and len(jax.tree.leaves(nu[0].nu)) == checked  # its statistics: in the optimizer state


def test_normuon_statistic_is_an_ema_of_each_neurons_mean_square_with_beta2_095():
    """The transform alone, on two hand-made updates of a wide (8 -> 24) and a tall (24 -> 8) matrix."""
    dims = MuonDimensionNumbers(reduction_axis=0, output_axis=1)
    tx = scale_by_neuron_rms(lambda tree: jax.tree.map(lambda x: dims, tree))
    ups = [{"wide": jax.random.normal(jax.random.key(t), (8, 24)),
            "tall": jax.random.normal(jax.random.key(10 + t), (24, 8))} for t in range(2)]
    state = tx.init(ups[0])
    nu = {"wide": np.zeros((1, 24)), "tall": np.zeros((24, 1))}  # the larger side's neurons
    for u in ups:
        out, state = tx.update(u, state)
        for key, axis in (("wide", 0), ("tall", 1)):
            o = np.asarray(u[key], np.float64)
            nu[key] = 0.95 * nu[key] + 0.05 * np.mean(o * o, axis=axis, keepdims=True)
            want = o / np.sqrt(nu[key])
            want *= np.linalg.norm(o) / np.linalg.norm(want)
            np.testing.assert_allclose(state.nu[key], nu[key], rtol=1e-5)
            np.testing.assert_allclose(out[key], want, rtol=1e-4, atol=1e-6)


# Cautious weight decay

@pytest.mark.parametrize("name", list(BEFORE))
def test_cautious_wd_skips_the_decay_where_update_and_weight_disagree_and_decays_the_rest_as_before(name):
    start = params()
    cfg = TrainConfig(optimizer=name, warmup_steps=0, lr=0.01, muon_lr=0.01, weight_decay=0.5, grad_clip=0)
    plain, cautious, undecayed = (by_name(steps(dataclasses.replace(cfg, **kw), start, 1)[0])
                                  for kw in ({}, {"cautious_wd": True}, {"weight_decay": 0.0}))
    p0 = by_name(start)
    agree_seen = disagree_seen = 0
    for key, p in p0.items():
        u = p - undecayed[key]  # the step's own direction (times lr), sign as the update's
        agree = u * p >= 0
        np.testing.assert_array_equal(cautious[key][agree], plain[key][agree], err_msg=key)
        np.testing.assert_array_equal(cautious[key][~agree], undecayed[key][~agree], err_msg=key)
        if not np.array_equal(plain[key], undecayed[key]):  # a decayed weight: both kinds of coordinate occur
            agree_seen += agree.sum()
            disagree_seen += (~agree).sum()
    assert agree_seen > 0 and disagree_seen > 0


# Config checks, the CLI, resume

@pytest.mark.parametrize("values, message", [
    ({"muon_iteration": "polar"}, "train.muon_iteration must be newton_schulz or polar_express, got 'polar'"),
    ({"normuon": True}, "train.normuon=True changes Muon's update, but train.optimizer=adamw: also set "
                        "train.optimizer=muon"),
    ({"muon_iteration": "polar_express", "optimizer": "lion"}, "train.muon_iteration=polar_express changes"),
])
def test_bad_values_are_refused(values, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        TrainConfig(**values)


def test_bad_value_on_the_command_line_is_one_error_line(tmp_path):
    result = run_in_process("train.py", "tiny", "train.muon_iteration=cubic", f"run.out_dir={tmp_path / 'r'}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: train.muon_iteration must be newton_schulz or polar_express, got 'cubic'"]
    assert not (tmp_path / "r").exists()


def test_a_run_with_every_lever_resumes_bit_for_bit(tiny, tmp_path):
    levers = ["train.optimizer=muon", "train.muon_iteration=polar_express", "train.normuon=true",
              "train.cautious_wd=true", "train.steps=8", "train.lr_decay_steps=8", "train.eval_every=4",
              "train.eval_batches=1"]
    trainer.train(tiny(*levers, f"run.out_dir={tmp_path / 'whole'}"))
    part = tiny(*levers, f"run.out_dir={tmp_path / 'part'}")
    trainer.train(part.replace(train={"steps": 4}))
    trainer.train(part)
    cfg, _, mesh = trainer.setup(part)
    pieces = trainer.build(cfg, mesh)
    final = [trainer.restore_state(Checkpoints(tmp_path / run), 8, pieces) for run in ("whole", "part")]
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(final[0]), jax.tree.leaves(final[1]),
                                                     strict=True))
    assert any(isinstance(s, NorMuonState) for s in jax.tree.leaves(
        final[0].opt_state, is_leaf=lambda s: isinstance(s, NorMuonState)))
    # Its state's shape depends on normuon: resuming without it is refused, one line, the run untouched.
    result = run_in_process("train.py", "tiny", *levers, "train.normuon=false", f"run.out_dir={tmp_path / 'part'}")
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith(
        f"error: {tmp_path / 'part'} holds a run trained with train.normuon=True, but this config says False")


def test_replicated_flops_count_muons_orthogonalisation_of_every_matrix_the_model_has():
    from gptjax import config, sharding

    cfg = config.load("speedrun", []).resolve_vocab(65)
    params = nnx.state(nnx.eval_shape(lambda: GPT(cfg.model, rngs=nnx.Rngs(0))), nnx.Param)
    is_dims = lambda d: d is None or isinstance(d, MuonDimensionNumbers)  # noqa: E731
    matrices = []
    for p, d in zip(jax.tree.leaves(params), jax.tree.leaves(optim.muon_dims(params), is_leaf=is_dims)):
        if d is not None:  # the matrix Muon orthogonalises: its reduction axes by its output axes
            axes = [(a,) if isinstance(a, int) else a for a in (d.reduction_axis, d.output_axis)]
            matrices.append([int(np.prod([p.shape[i] for i in ax])) for ax in axes])
    assert len(matrices) == 6 * cfg.model.n_layer
    direct = 5 * sum(4 * min(m, n) ** 2 * max(m, n) + 2 * min(m, n) ** 3 for m, n in matrices)
    assert optim.replicated_flops(cfg.model, cfg.train) == direct
    step = cfg.model.flops_per_token() * cfg.tokens_per_step
    assert direct > sharding.SPLIT_MAX_REPLICATED * step  # so the speedrun keeps one core, as measured
    assert optim.replicated_flops(cfg.model, dataclasses.replace(cfg.train, optimizer="adamw")) == 0
