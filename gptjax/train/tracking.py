"""Where training reports go: metrics.jsonl, a progress bar and wandb, on process 0 only."""

from __future__ import annotations

import json
import math
import os
import secrets
import time
from pathlib import Path

import jax

from gptjax import progress, units
from gptjax.files import atomic_write

METRICS_FILE = "metrics.jsonl"


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a kill: its step is trained again
            continue
    return [r for r in rows if isinstance(r, dict) and isinstance(r.get("step"), int)]


class Tracker:
    def __init__(self, run_dir: Path, cfg, start_step: int, total_steps: int):
        """Rows before start_step stay; row start_step is written again after its update (the checkpoint at a
        step comes before that step's update), unless no update follows: a finished run keeps its last row."""
        self.active = jax.process_index() == 0
        self.path = Path(run_dir) / METRICS_FILE
        self.bar = self.wandb = self.file = None
        if not self.active:
            return
        self.rewind(start_step if start_step >= total_steps else start_step - 1)
        if cfg.run.progress:
            self.bar = progress.bar(total_steps, unit="step", initial=start_step)
        if cfg.run.wandb != "off":
            import wandb

            mode = cfg.run.wandb
            if mode == "online" and not has_wandb_key():  # wandb.init would wait on the network, then fail
                self.message(f"warning: run.wandb=online but no wandb API key is set (WANDB_API_KEY or `wandb "
                             f"login`); logging offline in {run_dir}/wandb instead (upload it with `wandb sync`)")
                mode = "offline"
            self.wandb = wandb.init(project=cfg.run.wandb_project, mode=mode, config=cfg.to_dict(),
                                    group=cfg.run.wandb_group or None, dir=str(run_dir), name=_wandb_name(run_dir, cfg),
                                    id=_wandb_id(run_dir), resume="allow")

    def rewind(self, step: int) -> None:
        """Drop the lines after `step`: they will be trained again, and metrics.jsonl never holds a step twice."""
        if not self.active:
            return
        if self.file is not None:
            self.file.close()
        kept = [m for m in read_metrics(self.path.parent) if m["step"] <= step]
        atomic_write(self.path, "".join(json.dumps(m) + "\n" for m in kept))
        self.file = open(self.path, "a", buffering=1)
        if self.bar is not None:  # the updates done before the first row trained again
            self.bar.n = min(max(step + 1, 0), self.bar.total)
            self.bar.refresh()

    def log(self, step: int, metrics: dict) -> None:
        if not self.active:
            return
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        self.file.write(json.dumps(row) + "\n")
        if self.wandb is not None:
            self.wandb.log(row, step=step)
        if self.bar is not None and "train_loss" in row:
            shown = {"loss": f"{row['train_loss']:.4f}"}
            if "tokens_per_sec" in row:
                shown["tok/s"] = f"{row['tokens_per_sec']:,.0f}"
            self.bar.set_postfix(shown, refresh=False)

    def message(self, text: str) -> None:
        if self.active:
            (self.bar.write if self.bar is not None else print)(text)

    @property
    def shows_progress(self) -> bool:
        return self.bar is not None

    def evaluating(self, done: int, total: int) -> None:
        """Shown on the bar while an evaluation runs, so a long one (a large vocabulary on a CPU) is seen moving."""
        if self.bar is not None:
            self.bar.set_description_str(f"eval {done}/{total}")

    def evaluated(self) -> None:
        """After an evaluation: the bar's clock skips it, so its s/step stays the training steps' own."""
        if self.bar is not None:
            self.bar.set_description_str("", refresh=False)
            self.bar.unpause()

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def compiled(self, step: int) -> None:
        """The first step after a start is done, compiled: the bar counts it and starts its clock here, so its
        rate and ETA are the training steps' own (a first step of 16 s once read as a nine-hour ETA)."""
        if self.bar is not None:
            self.bar.reset(self.bar.total)  # a new clock, and no rate remembered from the compile
            self.bar.n = self.bar.last_print_n = self.bar.initial = step
            self.bar.refresh()

    def finished(self, step: int, trained: int, wall_s: float, tokens_per_sec: float | None) -> None:
        """The run's last line, under its closed bar: steps, wall time, speed, best val loss and its step, run dir."""
        if not self.active:
            return
        evaluated = [r for r in read_metrics(self.path.parent) if isinstance(r.get("val_loss"), (int, float))]
        best = min(evaluated, key=lambda r: r["val_loss"], default=None)
        speed = f", {tokens_per_sec:,.0f} tokens/s" if tokens_per_sec else ""
        loss = f"best val loss {best['val_loss']:.4f} at step {best['step']}" if best else "no val loss yet"
        if self.bar is not None:  # the bar's last state first, then the line under it
            self.bar.close()
            self.bar = None
        took = f"{trained} steps in {units.duration(wall_s)}{speed}"
        print(f"done: step {step} ({took}); {loss}; run dir {self.path.parent}")

    def close(self) -> None:
        if not self.active:
            return
        self.file.close()
        if self.bar is not None:
            self.bar.close()
        if self.wandb is not None:
            self.wandb.finish()


def has_wandb_key() -> bool:
    """An API key in the environment or in ~/.netrc (where `wandb login` puts it), read without the network."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    import netrc
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class Clock:
    """Tokens per second between log lines; a step that compiles (the first after a start, a warm-up's first at a
    new shape) is timed apart.

    `trained_tokens` and `trained_s` add up every interval read, for the run's overall speed.
    """

    def __init__(self):
        self.restart()
        self.compile_s = None
        self.trained_tokens, self.trained_s = 0, 0.0

    def restart(self, keep: tuple[int, float] = (0, 0.0)) -> None:
        self.since, (self.tokens, self.kept_s) = time.perf_counter(), keep

    def skip(self, seconds: float) -> None:
        """Leave `seconds` (an evaluation) out of the rate, keeping the steps counted so far."""
        self.since += seconds

    def settle(self, state) -> None:
        """Before a step that compiles mid-interval: the steps so far are waited for and kept in the rate."""
        jax.block_until_ready(state)
        self.restart((self.tokens, self.kept_s + time.perf_counter() - self.since))

    def tick(self, state, first: bool, tokens: int) -> None:
        """A step of `tokens` tokens dispatched; `first`: it compiled, so it is left out of the rate."""
        if first:
            jax.block_until_ready(state)
            self.compile_s = time.perf_counter() - self.since
            self.restart((self.tokens, self.kept_s))
        else:
            self.tokens += tokens

    def read(self) -> dict[str, float]:
        row = {"compile_s": self.compile_s} if self.compile_s is not None else {}
        if self.tokens:
            seconds = time.perf_counter() - self.since + self.kept_s
            row["tokens_per_sec"] = self.tokens / seconds
            self.trained_tokens, self.trained_s = self.trained_tokens + self.tokens, self.trained_s + seconds
        self.compile_s = None
        self.restart()
        return row


def _plain(v):
    v = float(v) if hasattr(v, "item") or isinstance(v, float) else v
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _wandb_name(run_dir: Path, cfg) -> str:
    # A sweep's runs are SWEEP/POINT/seed=N: inside a group the point tells them apart, "seed=0" alone would not.
    run_dir = Path(run_dir).absolute()
    return f"{run_dir.parent.name}/{run_dir.name}" if cfg.run.wandb_group else run_dir.name


def _wandb_id(run_dir: Path) -> str:
    # One wandb run per run directory, so a resumed run continues the same curves.
    path = Path(run_dir) / "wandb_id"
    if not path.is_file():
        path.write_text(secrets.token_hex(8))
    return path.read_text().strip()
