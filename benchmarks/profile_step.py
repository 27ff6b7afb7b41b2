"""Where the train step's time goes: a per-op profile of the real step, grouped by kind.

    python benchmarks/profile_step.py [CONFIG] [section.key=value ...] [--steps N]

Traces N steps with jax.profiler, reads each XLA op's events from the Perfetto trace and
joins them to the optimized HLO by instruction name. XLA:CPU runs independent ops side by
side, so every moment of the step is split evenly among the ops running then: the kinds
add up to the time the device was busy. Matmul FLOPs come from the HLO shapes, so the
matmul kinds also get their achieved GFLOP/s. Some weight-gradient matmuls run on Eigen's
pool after their op has returned, so their time lands on whatever runs beside them
(mostly other matmuls): trust the matmul rates in aggregate, not per shape. Prints one
JSON line per kind, then a total.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import math
import re
import statistics
import tempfile
import time

import jax

from gptjax import config as config_lib
from gptjax.train import trainer

INSTRUCTION = re.compile(r"\s*(?:ROOT )?%?([\w.\-]+) = (\w+\[[\d,]*\])\S* (.*)")


def parse_hlo(text: str):
    """{instruction: (shape, rest of line)} and {computation: [instruction lines]}."""
    lines, comps, current = {}, collections.defaultdict(list), None
    for line in text.splitlines():
        head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if head:
            current = head.group(1)
            continue
        m = INSTRUCTION.match(line)
        if m:
            lines.setdefault(m.group(1), (m.group(2), m.group(3)))
            comps[current].append(m.groups())
    return lines, comps


def dims(shape: str) -> list[int]:
    return [int(d) for d in re.findall(r"\d+", shape.split("[", 1)[1])] if "[" in shape else []


def classify(name: str, lines, comps) -> tuple[str, float]:
    """(kind, FLOPs) of one top-level op; a fusion is judged by the instructions it calls."""
    shape, rest = lines[name]
    called = re.search(r"calls=%?([\w.\-]+)", rest)
    body = comps.get(called.group(1), []) if called else [(name, shape, rest)]
    for _, out, text in body:
        if text.startswith("dot("):
            lhs = re.match(r"dot\(%?([\w.\-]+)", text).group(1)
            dims_text = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", text).group(1)
            contracting = [int(d) for d in dims_text.split(",") if d]
            lhs_dims = dims(lines.get(lhs, ("",))[0])  # HLO names are unique across computations
            k = math.prod(lhs_dims[d] for d in contracting) if lhs_dims else 0
            kind = "matmul, attention (batched)" if "lhs_batch_dims" in text else "matmul, projections and MLP"
            return kind, 2.0 * math.prod(dims(out)) * k
    ops = " ".join(text.split("(")[0] for _, _, text in body)
    if "all-reduce" in ops or "all-reduce" in rest:
        return "all-reduce", 0.0
    if "shift-right-logical" in ops and "u32" in " ".join(s for _, s, _ in body):
        return "random bits (dropout)", 0.0
    if "exponential" in ops:
        return "softmax", 0.0
    if "tanh" in ops:
        return "gelu", 0.0
    if re.search(r"\[\d+,\d+,\d+,\d+", shape):
        return "attention, elementwise and layout", 0.0
    return "other elementwise, layout, optimizer", 0.0


def busy_time_by_op(events) -> dict[str, float]:
    """Microseconds per op name, each instant split evenly among the ops running then."""
    edges = collections.defaultdict(list)
    for start, end, name in events:
        edges[start].append((1, name))
        edges[end].append((-1, name))
    active, share, previous = collections.Counter(), collections.Counter(), None
    for t in sorted(edges):
        if previous is not None and active:
            n = sum(active.values())
            for name, count in active.items():
                share[name] += (t - previous) * count / n
        for delta, name in edges[t]:
            active[name] += delta
            if not active[name]:
                del active[name]
        previous = t
    return share


def timed_steps(step, state, x, y, n: int):
    """Milliseconds of each of n steps, run without the profiler, and the state after them."""
    times = []
    for _ in range(n):
        t = time.perf_counter()
        state, metrics = step(state, x, y)
        jax.block_until_ready(metrics)
        times.append((time.perf_counter() - t) * 1e3)
    return times, state


def traced_steps(step, state, x, y, n: int) -> list[dict]:
    """The profiler's trace events of n steps."""
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            for _ in range(n):
                state, metrics = step(state, x, y)
                jax.block_until_ready(metrics)
        with gzip.open(glob.glob(f"{trace_dir}/**/perfetto_trace.json.gz", recursive=True)[0]) as f:
            trace = json.load(f)
    return trace["traceEvents"] if isinstance(trace, dict) else trace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default="shakespeare_char_cpu")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    cfg, ds, mesh = trainer.setup(config_lib.load(args.config, args.overrides))
    pieces = trainer.build(cfg, mesh)
    state = trainer.init_state(cfg, pieces)
    x, y = trainer.train_batch(cfg, ds, 0, mesh)
    step = pieces.train_step.lower(state, x, y).compile()
    lines, comps = parse_hlo(step.as_text())
    untraced, state = timed_steps(step, state, x, y, args.steps + 2)
    trace = traced_steps(step, state, x, y, args.steps)
    events = [(e["ts"], e["ts"] + e["dur"], e["name"]) for e in trace
              if e.get("ph") == "X" and e.get("name") in lines]
    ms, flops = collections.Counter(), collections.Counter()
    for name, us in busy_time_by_op(events).items():
        kind, f = classify(name, lines, comps)
        ms[kind] += us / 1e3 / args.steps
        flops[kind] += f
    busy = sum(ms.values())
    for kind, t in ms.most_common():
        gflops = round(flops[kind] / t / 1e6, 1) if flops[kind] else None
        print(json.dumps({"kind": kind, "ms_per_step": round(t, 2), "share": round(t / busy, 3),
                          "gflop_per_step": round(flops[kind] / 1e9, 2) or None, "gflop_per_s": gflops}))
    matmul_ms = sum(t for k, t in ms.items() if k.startswith("matmul"))
    matmul_flops = sum(f for k, f in flops.items() if k.startswith("matmul"))
    print(json.dumps({"config": args.config, "overrides": args.overrides, "device": jax.devices()[0].device_kind,
                      "devices": mesh.size, "step_ms_untraced": round(statistics.median(untraced[2:]), 1),
                      "busy_ms_traced": round(busy, 1), "matmul_ms": round(matmul_ms, 1),
                      "matmul_gflop_per_step": round(matmul_flops / 1e9, 2),
                      "matmul_gflop_per_s": round(matmul_flops / matmul_ms / 1e6, 1)}))


if __name__ == "__main__":
    main()
