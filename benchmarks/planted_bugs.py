"""Planted bugs: does the suite catch them? One-line bugs, one at a time, each in a fresh copy's file.

    python benchmarks/planted_bugs.py [--only WORD,...] [--list] [--no-baseline] [--keep]

The working tree is copied (tracked and untracked, not ignored, files) into a temporary folder once;
each bug replaces one exact line of one file there, runs the short pytest selection that should
catch it, and puts the line back. A bug is caught when a test fails (or errors); the table names
the first one. If a bug's original line is no longer in its file exactly once, the check stops
before running anything: the list must follow the code, never rot silently. A baseline run of
every selected test on the unmodified copy comes first, so a "caught" is never a test that fails
anyway. Exit status: 0 when every bug is caught, 1 when any is missed, 2 when the list is stale or
the baseline fails. Run it before resolving an issue that touches the files below.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class Bug:
    name: str
    file: str
    original: str      # the exact line as it is in the code (leading spaces included)
    replacement: str   # the line with the bug
    tests: tuple[str, ...]  # pytest node ids or files that should catch it


CONVERT_LOGITS = "tests/test_convert.py::test_logits_equal_transformers_at_every_position"
MODEL = "tests/test_model.py"
RECIPE = "tests/test_recipe.py"
ADAMW = f"{RECIPE}::test_adamw_steps_equal_the_formula_with_clipping_decay_mask_betas_and_schedule"
SAMPLING = "tests/test_sampling.py"
TRAIN = "tests/test_train.py"

BUGS = [
    # The model
    Bug("attention residual dropped", "gptjax/model/gpt.py",
        "        x_btd = x_btd + dropout(self.drop, attn_btd, rngs)",
        "        x_btd = dropout(self.drop, attn_btd, rngs)", (CONVERT_LOGITS,)),
    Bug("residual projections not scaled down at init", "gptjax/model/gpt.py",
        "        residual_std = 0.02 / (2 * cfg.n_layer) ** 0.5  "
        "# GPT-2: keep the residual stream's variance flat in depth",
        "        residual_std = 0.02", (f"{MODEL}::test_gpt2_init_scales_residual_projections",)),
    Bug("bfloat16 compute_dtype ignored", "gptjax/model/gpt.py",
        "        self.dtype = compute_dtype(cfg.compute_dtype)", '        self.dtype = jnp.dtype("float32")',
        ("tests/test_bf16.py",)),
    Bug("GELU exact instead of GPT-2's tanh form", "gptjax/model/layers.py",
        '    "gelu": lambda h: jax.nn.gelu(h, approximate=True),  # GPT-2\'s tanh GELU',
        '    "gelu": lambda h: jax.nn.gelu(h, approximate=False),', (CONVERT_LOGITS,)),
    # Attention: mask and scale
    Bug("causal mask lets a query see the next token", "gptjax/model/attention.py",
        "        visible_ts = jnp.arange(end)[None, :] <= jnp.arange(start, end)[:, None]",
        "        visible_ts = jnp.arange(end)[None, :] <= jnp.arange(start, end)[:, None] + 1",
        (f"{MODEL}::test_causality_future_tokens_never_change_past_logits",)),
    Bug("decoding mask lets a query see the next cache slot", "gptjax/model/attention.py",
        "        visible_ts = jnp.arange(S)[None, :] <= q_pos + jnp.arange(T)[:, None]",
        "        visible_ts = jnp.arange(S)[None, :] <= q_pos + jnp.arange(T)[:, None] + 1",
        (f"{MODEL}::test_kv_cache_logits_equal_full_recompute_at_every_position",)),
    Bug("attention scores scaled by 1/K, not 1/sqrt(K)", "gptjax/model/attention.py",
        "    q_bhtk = q_bhtk * jnp.asarray(K ** -0.5, q_bhtk.dtype)",
        "    q_bhtk = q_bhtk * jnp.asarray(K ** -1.0, q_bhtk.dtype)",
        (f"{MODEL}::test_blocked_cpu_attention_equals_masked_attention_and_its_gradients",)),
    Bug("RoPE ignores the position offset", "gptjax/model/rope.py",
        "    angle_tk = (pos + jnp.arange(T, dtype=jnp.float32))[:, None] * inv_freq_k  # K/2 angles per position",
        "    angle_tk = jnp.arange(T, dtype=jnp.float32)[:, None] * inv_freq_k",
        ("tests/test_modern.py::test_kv_cache_logits_equal_full_recompute[rope]",)),
    # Norms
    Bug("LayerNorm forgets to subtract the mean", "gptjax/model/layers.py",
        "        y = (x - mean) * jax.lax.rsqrt(var + 1e-5) * self.scale_d[...]",
        "        y = x * jax.lax.rsqrt(var + 1e-5) * self.scale_d[...]",
        (f"{MODEL}::test_norms_equal_their_formulas",)),
    Bug("RMSNorm divides by the root sum, not the root mean, square", "gptjax/model/layers.py",
        "        y = x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + 1e-5) * self.scale_d[...]",
        "        y = x32 * jax.lax.rsqrt(jnp.square(x32).sum(-1, keepdims=True) + 1e-5) * self.scale_d[...]",
        (f"{MODEL}::test_norms_equal_their_formulas",)),
    # Loss, data windows
    Bug("loss summed over tokens, not averaged", "gptjax/train/step.py",
        "    return optax.softmax_cross_entropy_with_integer_labels(logits_btv, y_bt).mean()",
        "    return optax.softmax_cross_entropy_with_integer_labels(logits_btv, y_bt).sum()",
        (f"{TRAIN}::test_run_directory_layout_and_metrics",)),
    Bug("targets are the inputs, not the next tokens", "gptjax/data/dataset.py",
        "    return window[..., :-1], window[..., 1:]", "    return window[..., :-1], window[..., :-1]",
        ("tests/test_data.py::test_batches_are_a_pure_function_of_seed_and_step",)),
    Bug("every step draws the same windows", "gptjax/data/dataset.py",
        "    return np.random.default_rng([seed, stream, step]).integers(0, n_tokens - n_ctx, size=batch_size)",
        "    return np.random.default_rng([seed, stream]).integers(0, n_tokens - n_ctx, size=batch_size)",
        ("tests/test_data.py::test_batches_are_a_pure_function_of_seed_and_step",)),
    # The train step, accumulation
    Bug("gradient accumulation summed, not averaged", "gptjax/train/step.py",
        "    grads = jax.tree.map(lambda g: g / n_micro, grad_sum)", "    grads = grad_sum",
        (f"{RECIPE}::test_accumulated_gradients_are_averaged_not_summed",)),
    Bug("the step never applies its update", "gptjax/train/step.py",
        "    params = optax.apply_updates(state.params, updates)", "    params = state.params",
        (f"{TRAIN}::test_tiny_model_overfits_one_batch",)),
    # The optimizer and its schedule
    Bug("AdamW's betas swapped", "gptjax/train/optim.py",
        "        direction = optax.scale_by_adam(b1=cfg.beta1, b2=cfg.beta2, eps=cfg.eps)",
        "        direction = optax.scale_by_adam(b1=cfg.beta2, b2=cfg.beta1, eps=cfg.eps)", (ADAMW,)),
    Bug("no gradient clipping", "gptjax/train/optim.py",
        "        optax.clip_by_global_norm(cfg.grad_clip) if cfg.grad_clip > 0 else optax.identity(),",
        "        optax.identity(),", (ADAMW,)),
    Bug("weight decay on biases and gains too", "gptjax/train/optim.py",
        '    return leaf_name(path).startswith("w")', "    return True", (ADAMW,)),
    Bug('"muon" routed to AdamW', "gptjax/train/optim.py",
        '    if cfg.optimizer == "muon":', '    if cfg.optimizer == "muon-never":',
        (f"{RECIPE}::test_muon_steps_equal_an_independent_reference",)),
    Bug("Muon's AdamW part decays biases and gains", "gptjax/train/optim.py",
        "        decayed = jax.tree.map(lambda u, p, w: step(u, p) if w else u, updates, params, decay_mask(params))",
        "        decayed = jax.tree.map(lambda u, p: step(u, p), updates, params)",
        (f"{RECIPE}::test_muon_steps_equal_an_independent_reference",)),
    Bug("Muon orthogonalises the token table", "gptjax/train/optim.py",
        '        if not is_weight(path) or name in TABLES:', "        if not is_weight(path):",
        (f"{RECIPE}::test_muon_steps_equal_an_independent_reference",)),
    Bug("cosine decay counted from the end of warm-up", "gptjax/train/optim.py",
        "        init_value=0.0, peak_value=peak, warmup_steps=cfg.warmup_steps, decay_steps=cfg.decay_steps, "
        "end_value=end)",
        "        init_value=0.0, peak_value=peak, warmup_steps=cfg.warmup_steps, "
        "decay_steps=cfg.decay_steps + cfg.warmup_steps, end_value=end)",
        (ADAMW,)),
    # Sampling: filters, temperature, cache
    Bug("top-k keeps k+1 tokens", "gptjax/sampling.py",
        "    sorted_bv = jnp.where(ranks < top_k, sorted_bv, -jnp.inf)",
        "    sorted_bv = jnp.where(ranks <= top_k, sorted_bv, -jnp.inf)",  # only top-p then sees the extra token
        (f"{SAMPLING}::test_top_k_never_draws_outside_the_k",
         f"{SAMPLING}::test_sampled_frequencies_follow_the_tempered_filtered_softmax")),
    Bug("top-p stops one token short of the mass", "gptjax/sampling.py",
        "    reaching = (jnp.cumsum(probs, axis=-1) - probs < top_p) & (ranks < top_k) & (sorted_bv > -jnp.inf)",
        "    reaching = (jnp.cumsum(probs, axis=-1) < top_p) & (ranks < top_k) & (sorted_bv > -jnp.inf)",
        (f"{SAMPLING}::test_top_p_keeps_the_smallest_set_with_that_mass",)),
    Bug("sampler ignores temperature", "gptjax/sampling.py",
        "    scaled = logits_bv / jnp.maximum(temperature, 1e-6)", "    scaled = logits_bv",
        (f"{SAMPLING}::test_sampled_frequencies_follow_the_tempered_filtered_softmax",)),
    Bug("KV cache used one token past the window", "gptjax/sampling.py",
        "            logits, cache = jax.lax.cond(cur <= self.n_ctx, lambda: self.cached(buf, cache, cur, offset),",
        "            logits, cache = jax.lax.cond(cur <= self.n_ctx + 1, lambda: self.cached(buf, cache, cur, offset),",
        (f"{SAMPLING}::test_cached_logits_equal_recomputed_ones_up_to_the_window_and_past_it",)),
    # Checkpoints and resume
    Bug("checkpoint restores a fresh dropout key", "gptjax/train/state.py",
        '    rng = jax.device_put(np.asarray(meta["rng"], np.uint32), pieces.state_shardings.rng)',
        "    rng = jax.device_put(np.zeros(2, np.uint32), pieces.state_shardings.rng)",
        (f"{TRAIN}::test_checkpoint_round_trip_is_exact",)),
    Bug("resume picks the oldest checkpoint", "gptjax/train/state.py",
        "    for step in reversed(ckpts.steps()):", "    for step in ckpts.steps():",
        (f"{TRAIN}::test_resume_continues_exactly_where_it_stopped",)),
    Bug("a resumed loop starts counting from 0", "gptjax/train/loop.py",
        "        step, self.saved = start, start  # self.saved: the checkpoint training stands on, never saved twice",
        "        step, self.saved = 0, start", (f"{TRAIN}::test_resume_continues_exactly_where_it_stopped",)),
    # Seeds trained together
    Bug("every stacked seed trains on the first seed's batches", "gptjax/train/seeds.py",
        "        xs, ys = zip(*(make(c) for c in self.cfgs))",
        "        xs, ys = zip(*(make(self.cfgs[0]) for c in self.cfgs))",
        ("tests/test_seeds.py::test_stacked_seeds_equal_separate_runs_through_a_resume",)),
    # Bits per byte and compute budgets
    Bug("bits per byte in nats (no division by ln 2)", "gptjax/train/loop.py",
        "    return mean_loss * n_tokens / math.log(2) / n_bytes", "    return mean_loss * n_tokens / n_bytes",
        ("tests/test_bpb.py::test_a_uniform_predictor_scores_log2_v_bits_per_token",)),
    Bug("bits per byte counts a BPE token as one byte", "gptjax/data/tokenizer.py",
        "        lengths = [len(self.enc.decode_single_token_bytes(i)) for i in range(self.vocab_size)]",
        "        lengths = [1 for i in range(self.vocab_size)]",
        ("tests/test_bpb.py::test_char_and_bpe_runs_on_one_text_report_bpb_from_their_own_byte_counts",)),
    Bug("FLOPs per token without the attention term", "gptjax/config/sections.py",
        "        attention = 12 * self.n_layer * (n_ctx or self.n_ctx) * self.n_embd",
        "        attention = 0 * self.n_layer * (n_ctx or self.n_ctx) * self.n_embd",
        ("tests/test_flops.py::test_the_knobs_move_the_count_as_the_matrices_do",
         "tests/test_flops.py::test_flops_per_token_is_within_10_percent_of_xla")),
    Bug("a FLOP budget rounds its steps up", "gptjax/config/warmup.py",
        "        fit = math.floor(budget / cost * (1 + 1e-12))",
        "        fit = math.ceil(budget / cost)",
        ("tests/test_budget.py::test_a_flops_budget_sets_the_steps_rounded_down",)),
]


def copy_tree(dest: Path) -> None:
    """The working tree as git sees it (tracked and untracked, ignored files left out), without .git."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        src = ROOT / name
        if src.is_file():  # a tracked file deleted in the working tree is skipped
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def stale(bugs: list[Bug], tree: Path) -> list[str]:
    """Every bug whose original line is not in its file exactly once, said plainly."""
    problems = []
    for bug in bugs:
        path = tree / bug.file
        lines = path.read_text().splitlines() if path.is_file() else None
        count = None if lines is None else lines.count(bug.original)
        if count != 1:
            where = "file is missing" if lines is None else f"line found {count} times, not once"
            problems.append(f"{bug.name}: {bug.file}: {where}:\n    {bug.original!r}")
    return problems


def pytest(tree: Path, tests, env: dict, timeout: float) -> tuple[int | None, str]:
    cmd = [sys.executable, "-m", "pytest", "-n", "0", "-x", "-q", "-p", "no:cacheprovider", "-rfE", *tests]
    try:
        done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, ""
    return done.returncode, done.stdout + done.stderr


def first_failure(output: str) -> str:
    found = re.search(r"^(?:FAILED|ERROR) (\S+)", output, re.MULTILINE)
    return found.group(1) if found else "?"


def run_bug(bug: Bug, tree: Path, env: dict, timeout: float) -> str:
    path = tree / bug.file
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    i = [line.rstrip("\n") for line in lines].index(bug.original)
    lines[i] = bug.replacement + "\n"
    path.write_text("".join(lines))
    try:
        code, output = pytest(tree, bug.tests, env, timeout)
    finally:
        path.write_text(text)
    if code is None:
        return f"MISSED (timed out after {timeout:.0f} s)"
    if code == 1:
        return first_failure(output)
    if code == 0:
        return "MISSED"
    return f"MISSED (pytest exit {code}: {output.strip().splitlines()[-1] if output.strip() else 'no output'})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="", help="run only bugs whose name contains one of these comma-separated "
                        "words")
    parser.add_argument("--list", action="store_true", help="list the bugs and exit")
    parser.add_argument("--no-baseline", action="store_true", help="skip the run of every test on the unmodified copy")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per pytest run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy (its path is printed)")
    args = parser.parse_args(argv)
    bugs = [b for b in BUGS if any(word in b.name for word in args.only.split(","))]
    if args.list:
        for b in bugs:
            print(f"{b.name}  [{b.file}]  {' '.join(b.tests)}")
        return 0
    tree = Path(tempfile.mkdtemp(prefix="gptjax-planted-"))
    try:
        return check(bugs, tree, args)
    finally:
        if args.keep:
            print(f"copy kept in {tree}", file=sys.stderr)
        else:
            shutil.rmtree(tree, ignore_errors=True)


def check(bugs: list[Bug], tree: Path, args) -> int:
    copy_tree(tree)
    if problems := stale(bugs, tree):
        print("error: the planted-bug list no longer matches the code; update BUGS in benchmarks/planted_bugs.py:\n"
              + "\n".join(problems), file=sys.stderr)
        return 2
    (tree / "jax-cache").mkdir()
    # The copy's package is imported (not the venv's editable install), no stale bytecode survives a
    # one-line edit, and the runs share one compilation cache.
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1",
           "GPTJAX_TEST_JAX_CACHE": str(tree / "jax-cache")}
    started = time.monotonic()
    if not args.no_baseline:
        every = sorted({t for b in bugs for t in b.tests})
        print(f"baseline: {len(every)} selections on the unmodified copy ...", file=sys.stderr, flush=True)
        code, output = pytest(tree, every, env, args.timeout * 3)
        if code != 0:
            print(f"error: the selected tests fail without any bug planted ({first_failure(output)}); "
                  f"fix them first\n{output[-3000:]}", file=sys.stderr)
            return 2
        print(f"baseline passed in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    rows = []
    for n, bug in enumerate(bugs, 1):
        t0 = time.monotonic()
        caught = run_bug(bug, tree, env, args.timeout)
        rows.append((bug, caught, time.monotonic() - t0))
        print(f"[{n}/{len(bugs)}] {bug.name}: {caught} ({rows[-1][2]:.0f} s)", file=sys.stderr, flush=True)
    print("| bug | file | caught by | s |\n|---|---|---|---|")
    for bug, caught, seconds in rows:
        print(f"| {bug.name} | `{bug.file}` | {'**' + caught + '**' if caught.startswith('MISSED') else f'`{caught}`'} "
              f"| {seconds:.0f} |")
    missed = sum(caught.startswith("MISSED") for _, caught, _ in rows)
    print(f"\n{len(rows) - missed} of {len(rows)} caught, {missed} missed; {time.monotonic() - started:.0f} s in all")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
