"""The training recipe pinned against independent float64 references: gradient accumulation, AdamW
(clipping, schedule, betas, the weight-decay mask) and Muon (momentum, Newton-Schulz, shape scaling).

Every other training test compares the code with itself (accumulate vs not, resume vs not), so a
wrong formula on both sides passes there; here the numbers come from formulas written out below.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from gptjax.config import ModelConfig, TrainConfig
from gptjax.model import GPT
from gptjax.train import optim
from gptjax.train.step import TrainState, initial_rng, loss_fn, train_step

CFG = ModelConfig(n_vocab=23, n_ctx=8, n_embd=16, n_head=2, n_layer=1)


def tiny_params(cfg=CFG):
    graphdef, params = nnx.split(GPT(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    return graphdef, params


def named_leaves(tree) -> dict[str, np.ndarray]:
    """Leaves by their path, as float64 numpy: the references' view of a parameter tree."""
    return {jax.tree_util.keystr(path): np.asarray(leaf, np.float64)
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def name_of(key: str) -> str:
    # "['blocks'][0]['attn']['bq_hk'].value" -> "bq_hk"
    return key.split("[")[-1].split("]")[0].strip("'")


def random_like(tree, seed, scale=1.0):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(treedef, [scale * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


# Gradient accumulation

def test_accumulated_gradients_are_averaged_not_summed():
    """Planted bug: gradient accumulation summed instead of averaged (the `/ n_micro` dropped in
    gptjax/train/step.py). Plain SGD at a constant rate and no clipping, so no optimizer can cancel a
    scale: grad_norm and the update must be those of the whole batch's mean loss."""
    graphdef, params = tiny_params()
    x = jax.random.randint(jax.random.key(1), (8, CFG.n_ctx), 0, CFG.n_vocab)
    y = jax.random.randint(jax.random.key(2), (8, CFG.n_ctx), 0, CFG.n_vocab)
    lr = 0.1
    tx, schedule = optax.sgd(lr), optax.constant_schedule(lr)
    whole = jax.grad(loss_fn)(params, graphdef, x, y)
    expected = jax.tree.map(lambda p, g: p - lr * g, params, whole)
    for accum in (1, 4):
        state = TrainState(jnp.int32(5), params, tx.init(params), initial_rng(0))
        new, metrics = jax.jit(train_step, static_argnums=(0, 1, 2))(
            graphdef, tx, schedule, state, x.reshape(accum, -1, CFG.n_ctx), y.reshape(accum, -1, CFG.n_ctx))
        np.testing.assert_allclose(float(metrics["grad_norm"]), float(optax.global_norm(whole)), rtol=1e-4)
        for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(expected), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


# AdamW

def reference_lr(cfg: TrainConfig, peak: float, t: int) -> float:
    """Linear warm-up from 0, then a cosine from peak to min_lr (scaled like peak) at decay_steps."""
    if t < cfg.warmup_steps:
        return peak * t / cfg.warmup_steps
    end = cfg.min_lr * peak / cfg.lr
    frac = min(t - cfg.warmup_steps, cfg.decay_steps - cfg.warmup_steps) / (cfg.decay_steps - cfg.warmup_steps)
    return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * frac))


def reference_adamw(cfg: TrainConfig, params: dict, grads_per_step: list[dict]) -> dict:
    """AdamW as the recipe says, in float64: clip the global norm, moments with bias correction,
    decoupled decay on weights (w*) only, never on biases (b*) or gains (scale_*)."""
    p = dict(params)
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for t, grads in enumerate(grads_per_step):
        norm = math.sqrt(sum((g ** 2).sum() for g in grads.values()))
        clip = min(1.0, cfg.grad_clip / norm)
        lr = reference_lr(cfg, cfg.lr, t)
        for k in p:
            g = grads[k] * clip
            m[k] = cfg.beta1 * m[k] + (1 - cfg.beta1) * g
            v[k] = cfg.beta2 * v[k] + (1 - cfg.beta2) * g * g
            m_hat, v_hat = m[k] / (1 - cfg.beta1 ** (t + 1)), v[k] / (1 - cfg.beta2 ** (t + 1))
            decay = cfg.weight_decay * p[k] if name_of(k).startswith("w") else 0.0
            p[k] = p[k] - lr * (m_hat / (np.sqrt(v_hat) + cfg.eps) + decay)
    return p


def run_optimizer(cfg: TrainConfig, params, grads_per_step):
    tx = optim.make(cfg)

    @jax.jit
    def step(params, opt_state, grads):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    opt_state = tx.init(params)
    for grads in grads_per_step:
        params, opt_state = step(params, opt_state, grads)
    return params


def test_adamw_steps_equal_the_formula_with_clipping_decay_mask_betas_and_schedule():
    """Planted bugs: clipping, the decay mask (matrices and tables decayed; biases, including the 2-D
    attention biases, and gains not), either beta, eps, or the warm-up/cosine schedule changed in
    gptjax/train/optim.py. Five steps, so the betas matter past the first step's bias correction,
    and the schedule is read in warm-up, at its peak and in the decay."""
    cfg = TrainConfig(lr=0.05, min_lr=0.005, warmup_steps=2, lr_decay_steps=6, weight_decay=0.3, beta1=0.7,
                      beta2=0.9, eps=1e-3, grad_clip=0.5)
    _, params = tiny_params()
    params = random_like(params, 3, 0.5)  # biases and gains away from 0 and 1, so decaying them shows
    grads = [random_like(params, 10 + t, 0.1 * (t + 1)) for t in range(5)]  # norms ~1 to 5: always clipped
    assert min(float(optax.global_norm(g)) for g in grads) > cfg.grad_clip
    got = named_leaves(run_optimizer(cfg, params, grads))
    want = reference_adamw(cfg, named_leaves(params), [named_leaves(g) for g in grads])
    assert got.keys() == want.keys()
    assert any(name_of(k) == "bq_hk" for k in want)  # the 2-D bias the rank rule used to decay
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=2e-5, atol=2e-6, err_msg=k)


def test_unclipped_gradients_pass_through_unchanged():
    """Planted bug: clipping always on (or by a wrong norm): a gradient under the threshold is not scaled."""
    cfg = TrainConfig(lr=0.05, warmup_steps=0, weight_decay=0.0, grad_clip=100.0)
    _, params = tiny_params()
    grads = [random_like(params, 20, 0.01)]
    got = named_leaves(run_optimizer(cfg, params, grads))
    want = reference_adamw(cfg, named_leaves(params), [named_leaves(g) for g in grads])
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=2e-5, atol=2e-6, err_msg=k)


# Muon

NS_COEFFS = (3.4445, -4.7750, 2.0315)  # modded-nanogpt's quintic, as optax's Muon uses by default


def newton_schulz(g: np.ndarray, steps: int = 5, eps: float = 1e-8) -> np.ndarray:
    a, b, c = NS_COEFFS
    x = g.T if g.shape[0] > g.shape[1] else g
    x = x / (np.linalg.norm(x) + eps)
    for _ in range(steps):
        s = x @ x.T
        x = a * x + (b * s + c * s @ s) @ x
    return x.T if g.shape[0] > g.shape[1] else x


def as_matrix(key: str, x: np.ndarray) -> np.ndarray:
    """A weight as the linear map it is: inputs on rows, outputs on columns (w_dhk: D x HK; w_hkd: HK x D)."""
    dims = name_of(key).rsplit("_", 1)[-1]
    n_in = 1 if dims.startswith("d") else x.ndim - 1
    return x.reshape(math.prod(x.shape[:n_in]), -1)


def reference_muon(cfg: TrainConfig, params: dict, grads_per_step: list[dict]) -> dict:
    """Muon on the matrices (Nesterov momentum with bias correction, Newton-Schulz, sqrt(max(1, out/in)),
    decay), Nesterov AdamW on the tables (wte, wpe, w_unembed; decayed), biases and gains (not decayed);
    no clipping (grad_clip=0)."""
    beta, b1, b2, eps = cfg.beta1, cfg.beta1, cfg.beta2, cfg.eps
    p = dict(params)
    mu = {k: np.zeros_like(x) for k, x in p.items()}
    nu = {k: np.zeros_like(x) for k, x in p.items()}
    tables = ("wte_vd", "wpe_td", "w_unembed_vd")
    for t, grads in enumerate(grads_per_step):
        n = t + 1
        for k, g in grads.items():
            name = name_of(k)
            if name.startswith("w") and name not in tables:
                mu[k] = beta * mu[k] + (1 - beta) * g
                nesterov = beta * mu[k] / (1 - beta ** (n + 1)) + (1 - beta) * g / (1 - beta ** n)
                m = as_matrix(k, nesterov)
                u = newton_schulz(m) * math.sqrt(max(1.0, m.shape[1] / m.shape[0]))
                p[k] = p[k] - reference_lr(cfg, cfg.muon_lr, t) * (u.reshape(g.shape) + cfg.weight_decay * p[k])
            else:
                mu[k] = b1 * mu[k] + (1 - b1) * g
                nu[k] = b2 * nu[k] + (1 - b2) * g * g
                m_hat = b1 * mu[k] / (1 - b1 ** (n + 1)) + (1 - b1) * g / (1 - b1 ** n)
                decay = cfg.weight_decay * p[k] if name.startswith("w") else 0.0  # tables, never biases or gains
                p[k] = p[k] - reference_lr(cfg, cfg.lr, t) * (m_hat / (np.sqrt(nu[k] / (1 - b2 ** n)) + eps) + decay)
    return p


def test_muon_steps_equal_an_independent_reference():
    """Planted bugs: "muon" routed to AdamW; Newton-Schulz coefficients, momentum or shape scaling
    changed; a table, bias or gain sent to the orthogonalised part; biases or gains decayed
    (gptjax/train/optim.py). Two steps with different gradients, so the momentum carries one into the next."""
    cfg = TrainConfig(optimizer="muon", lr=0.01, muon_lr=0.05, warmup_steps=0, lr_decay_steps=4, min_lr=0.001,
                      weight_decay=0.3, beta1=0.9, beta2=0.95, grad_clip=0.0)
    _, params = tiny_params(dataclasses.replace(CFG, tie_embeddings=False, n_vocab=40))
    params = random_like(params, 4, 0.5)  # biases and gains away from 0 and 1, so decaying them shows
    grads = [random_like(params, 30 + t) for t in range(2)]
    got = named_leaves(run_optimizer(cfg, params, grads))
    want = reference_muon(cfg, named_leaves(params), [named_leaves(g) for g in grads])
    assert {"wq_dhk", "wo_hkd", "w_up_df", "w_unembed_vd", "bq_hk", "scale_d"} <= {name_of(k) for k in want}
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=2e-6, err_msg=k)
