"""Benchmarks: time the train step, eval step and sampler; print one JSON line per measurement.

    gptjax bench CONFIG [section.key=value ...] [--steps N] [--only train,eval,sample]

Timings are medians over many calls after warm-up, each blocking on its result, with
compilation timed apart (ahead-of-time lower + compile). MFU divides achieved FLOPs
(6N + 12·L·T·D per token, attention not halved for causality) by the device's dense bf16
peak; it is null where the peak is unknown, as on CPU.
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import statistics
import sys
import time

import jax

from gptjax import config as config_lib
from gptjax import errors, progress

# Dense bf16 peak FLOP/s by device_kind prefix (vendor datasheets, no sparsity).
PEAK_FLOPS = {
    "NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12, "NVIDIA L4": 121e12,
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v5": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12,
}


def peak_flops(device) -> float | None:
    kind = device.device_kind
    return next((v for k, v in PEAK_FLOPS.items() if kind.startswith(k)), None)


def peak_memory_bytes() -> int:
    """Peak device memory where the device reports it, else the process's peak RSS."""
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def median_ms(fn, n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def compiled(jitted, *args):
    """(executable, seconds to lower and compile it)."""
    t = time.perf_counter()
    exe = jitted.lower(*args).compile()
    return exe, time.perf_counter() - t


def bench_train(cfg, steps: int) -> dict:
    from gptjax.train import trainer

    cfg, ds, mesh = trainer.setup(cfg)
    pieces = trainer.build(cfg, mesh)
    state = trainer.init_state(cfg, pieces)
    batches = [trainer.train_batch(cfg, ds, i, mesh) for i in range(4)]
    step, compile_s = compiled(pieces.train_step, state, *batches[0])
    holder = {"state": state, "i": 0}

    def one():
        holder["i"] += 1
        holder["state"], metrics = step(holder["state"], *batches[holder["i"] % len(batches)])
        return metrics["train_loss"]

    for _ in range(3):
        # Waited for: steps run asynchronously, so the first timed step would also wait for these.
        jax.block_until_ready(one())
    ms = median_ms(one, steps)
    return row(cfg, "train_step", ms, compile_s, tokens=cfg.tokens_per_step,
               flops_per_token=cfg.model.flops_per_token(), devices=mesh.size)


def bench_eval(cfg, steps: int) -> dict:
    from gptjax.train import trainer

    cfg, ds, mesh = trainer.setup(cfg)
    pieces = trainer.build(cfg, mesh)
    state = trainer.init_state(cfg, pieces)
    x, y = trainer.train_batch(cfg, ds, 0, mesh)
    x, y = x[0], y[0]
    step, compile_s = compiled(pieces.eval_step, state.params, x, y)
    ms = median_ms(lambda: step(state.params, x, y), steps)
    tokens = cfg.train.micro_batch_size * cfg.model.n_ctx
    return row(cfg, "eval_step", ms, compile_s, tokens=tokens, flops_per_token=cfg.model.flops_per_token() // 3,
               devices=mesh.size)


def bench_sample(cfg, new_tokens: int, num_samples: int) -> list[dict]:
    """Sampler tokens/s with the cache and with full recompute, inside the window and past it."""
    from flax import nnx

    from gptjax import sampling
    from gptjax.model import GPT
    from gptjax.train import trainer

    cfg, ds, _ = trainer.setup(cfg)
    graphdef, params = nnx.split(GPT(cfg.model, rngs=nnx.Rngs(0)), nnx.Param)
    prompt = ds.tokenizer.bos_ids
    inside = cfg.model.n_ctx - len(prompt)
    out = []
    for label, n in (("inside_window", inside), ("past_window", new_tokens)):
        for mode in ("cache", "cache_shift", "recompute"):
            kw = dict(max_new_tokens=n, num_samples=num_samples, temperature=1.0, use_cache=mode != "recompute",
                      window="shift" if mode == "cache_shift" else "exact")
            if mode == "cache_shift" and label == "inside_window":
                continue  # identical to "cache" until the window fills
            run = functools.partial(sampling.generate, graphdef, params, cfg.model, prompt, **kw)
            t = time.perf_counter()
            run()
            first = time.perf_counter() - t
            ms = median_ms(run, 3)
            out.append(sample_row(cfg, f"sample_{label}_{mode}", ms, max(first - ms / 1e3, 0.0),
                                  new_tokens=n, num_samples=num_samples))
    out.append({"measurement": "sample_compilations", "count": sampling._generate._cache_size()})  # noqa: SLF001
    return out


def row(cfg, name: str, ms: float, compile_s: float, *, tokens: int, flops_per_token: int | None = None,
        devices: int = 1) -> dict:
    """One train or eval step measurement; `devices` is how many the step ran on."""
    peak = peak_flops(jax.devices()[0])
    tokens_per_sec = tokens / (ms / 1e3)
    mfu = round(tokens_per_sec * flops_per_token / (peak * devices), 4) if peak and flops_per_token else None
    return _common(cfg, name, tokens_per_sec, compile_s, devices) | {
        "batch_size": cfg.train.batch_size, "ms_per_step": round(ms, 3), "mfu": mfu,
        "flops_per_token": flops_per_token}


def sample_row(cfg, name: str, ms: float, compile_s: float, *, new_tokens: int, num_samples: int) -> dict:
    """One sampler measurement: a call generates num_samples samples of new_tokens each, side by side,
    so ms_per_token is one decoding step of all of them."""
    return _common(cfg, name, new_tokens * num_samples / (ms / 1e3), compile_s, devices=1) | {
        "num_samples": num_samples, "new_tokens": new_tokens, "ms_per_call": round(ms, 3),
        "ms_per_token": round(ms / new_tokens, 4)}


def _common(cfg, name: str, tokens_per_sec: float, compile_s: float, devices: int) -> dict:
    return {"measurement": name, "device": jax.devices()[0].device_kind, "devices": devices,
            "n_layer": cfg.model.n_layer, "n_head": cfg.model.n_head, "n_embd": cfg.model.n_embd,
            "n_ctx": cfg.model.n_ctx, "tokens_per_sec": round(tokens_per_sec, 1), "compile_s": round(compile_s, 3),
            "peak_memory_mb": round(peak_memory_bytes() / 2**20, 1), "jax": jax.__version__}


def main(argv: list[str]) -> int:
    parser = errors.ArgumentParser(prog="gptjax bench", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", help="config file or preset (default: shakespeare_char_cpu)")
    parser.add_argument("overrides", nargs="*", help="section.key=value settings")
    parser.add_argument("--steps", type=int, default=50, help="timed steps for the train and eval medians")
    parser.add_argument("--only", default="train,eval,sample", help="comma-separated: train, eval, sample")
    parser.add_argument("--sample-tokens", type=int, default=500, help="new tokens for the past-window sampler run")
    parser.add_argument("--num-samples", type=int, default=1, help="samples generated side by side per call")
    args = parser.parse_args(argv)
    if args.config and "=" in args.config:
        args.overrides, args.config = [args.config, *args.overrides], None

    def run():
        # The full-shape step: the one a batch or sequence warm-up ends at and trains most steps with.
        cfg = config_lib.load(args.config, args.overrides)
        cfg = cfg.replace(train={"batch_warmup_steps": 0, "seq_warmup_steps": 0})
        from gptjax import sharding

        sharding.split_cores()  # before JAX starts: the step is timed on the devices train.py would train on
        parts = {"train": (f"the train step ({args.steps} steps)", lambda: [bench_train(cfg, args.steps)]),
                 "eval": (f"the eval step ({args.steps} steps)", lambda: [bench_eval(cfg, args.steps)]),
                 "sample": ("the sampler (5 ways)", lambda: bench_sample(cfg, args.sample_tokens, args.num_samples))}
        wanted = [p for p in parts if p in args.only.split(",")]
        with progress.bar(len(wanted), "bench", unit="part") as bar:
            for part in wanted:
                what, measure = parts[part]
                bar.set_postfix_str(f"timing {what}, compile included")
                for r in measure():  # each line as soon as it is measured: nothing waits silently
                    bar.write(json.dumps(r), file=sys.stdout)
                bar.update()

    return errors.run_cli(run)


if __name__ == "__main__":
    from gptjax import runtime

    runtime.configure(compilation_cache=False)  # bench times compilation: no cache hits
    sys.exit(main(sys.argv[1:]))
