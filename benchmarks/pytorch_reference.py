"""The PyTorch yardstick for BENCHMARKS.md: nanoGPT's model and step, timed like gptjax.bench.

    python benchmarks/pytorch_reference.py cpu_recipe|baby_gpt [--steps N] [--compile] [--save CKPT]
    python benchmarks/pytorch_reference.py cpu_recipe --sample CKPT [--max-new-tokens N]

A GPT-2 block as nanoGPT writes it (pre-LayerNorm, causal scaled_dot_product_attention,
GELU MLP, tied unembedding, AdamW with its weight-decay split, gradient clipping), with
the biases and dropout of gptjax's matching preset (dropout on the embeddings and both
residual branches), written out here so the comparison runs on the same machine without
nanoGPT's repository. Prints one JSON line: median ms per train step after warm-up,
tokens/s and peak RSS. Needs torch (the `[hf]` extra installs it).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

SHAPES = {  # nanoGPT's two Shakespeare recipes, as gptjax's presets shakespeare_char_cpu and shakespeare_char
    "cpu_recipe": dict(n_layer=4, n_head=4, n_embd=128, n_ctx=64, batch=12, bias=False, dropout=0.0),
    "baby_gpt": dict(n_layer=6, n_head=6, n_embd=384, n_ctx=256, batch=64, bias=True, dropout=0.2),
}
N_VOCAB = 65  # Shakespeare's characters


class Block(nn.Module):
    def __init__(self, d: int, n_head: int, bias: bool, dropout: float):
        super().__init__()
        self.n_head = n_head
        self.ln_1, self.ln_2 = nn.LayerNorm(d, bias=bias), nn.LayerNorm(d, bias=bias)
        self.qkv, self.proj = nn.Linear(d, 3 * d, bias=bias), nn.Linear(d, d, bias=bias)
        self.up, self.down = nn.Linear(d, 4 * d, bias=bias), nn.Linear(4 * d, d, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln_1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.drop(self.proj(y.transpose(1, 2).contiguous().view(b, t, d)))
        return x + self.drop(self.down(F.gelu(self.up(self.ln_2(x)), approximate="tanh")))


class GPT(nn.Module):
    def __init__(self, n_layer: int, n_head: int, n_embd: int, n_ctx: int, bias: bool, dropout: float):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(N_VOCAB, n_embd), nn.Embedding(n_ctx, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, bias, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, bias=bias)
        self.head = nn.Linear(n_embd, N_VOCAB, bias=False)
        self.head.weight = self.wte.weight

    def logits(self, idx):
        x = self.drop(self.wte(idx) + self.wpe(torch.arange(idx.shape[1])))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))

    def forward(self, idx, targets):
        return F.cross_entropy(self.logits(idx).view(-1, N_VOCAB), targets.view(-1))


def adamw(model: nn.Module) -> torch.optim.AdamW:
    """nanoGPT's AdamW: weight decay 0.1 on matrices and tables, none on gains and biases."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                             lr=1e-3, betas=(0.9, 0.99))


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x, y) -> torch.Tensor:
    """One optimizer step with the gradient norm clipped at 1; returns the loss (not synchronised)."""
    loss = model(x, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss


@torch.no_grad()
def sample(ckpt: str, shapes: dict, max_new_tokens: int) -> None:
    """nanoGPT's sample.py loop: load the checkpoint, crop to n_ctx, temperature 0.8, top-k 200, no cache."""
    model = GPT(**{k: shapes[k] for k in ("n_layer", "n_head", "n_embd", "n_ctx", "bias", "dropout")})
    model.load_state_dict(torch.load(ckpt)["model"])
    model.eval()
    idx = torch.zeros((1, 1), dtype=torch.long)
    for _ in range(max_new_tokens):
        logits = model.logits(idx[:, -shapes["n_ctx"]:])[:, -1, :] / 0.8
        v, _ = torch.topk(logits, min(200, N_VOCAB))
        logits[logits < v[:, [-1]]] = -float("inf")
        idx = torch.cat((idx, torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)), dim=1)
    print(json.dumps({"measurement": "sample", "new_tokens": max_new_tokens, "last_id": int(idx[0, -1])}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shapes", choices=SHAPES)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--save", help="after the steps, torch.save the model here (nanoGPT's ckpt.pt layout)")
    parser.add_argument("--sample", metavar="CKPT", help="only sample --max-new-tokens from this checkpoint")
    parser.add_argument("--max-new-tokens", type=int, default=500)
    parser.add_argument("--eval-batches", type=int, default=0,
                        help="before the first step, evaluate this many batches of each split (nanoGPT's iter 0)")
    args = parser.parse_args()
    if args.sample:
        return sample(args.sample, SHAPES[args.shapes], args.max_new_tokens)
    train(args, SHAPES[args.shapes])


def train(args, s: dict) -> None:
    """Eval batches, then the first step (printed as nanoGPT logs iter 0), then the timed steps."""
    torch.manual_seed(0)
    model = GPT(s["n_layer"], s["n_head"], s["n_embd"], s["n_ctx"], s["bias"], s["dropout"])
    opt = adamw(model)
    step_model = torch.compile(model) if args.compile else model
    x = torch.randint(N_VOCAB, (s["batch"], s["n_ctx"]))
    y = torch.randint(N_VOCAB, (s["batch"], s["n_ctx"]))

    def step():
        return train_step(step_model, opt, x, y).item()  # blocks, as gptjax.bench blocks on the loss

    with torch.no_grad():
        for _ in range(2 * args.eval_batches):
            model(x, y).item()
    print(json.dumps({"measurement": "first_step", "loss": step()}), flush=True)  # as nanoGPT logs iter 0
    for _ in range(2):
        step()
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        times.append((time.perf_counter() - t) * 1e3)
    ms = statistics.median(times)
    print(json.dumps({"measurement": "train_step", "framework": f"torch {torch.__version__}", "shapes": args.shapes,
                      "compile": args.compile, "threads": torch.get_num_threads(), **s, "ms_per_step": round(ms, 3),
                      "tokens_per_sec": round(s["batch"] * s["n_ctx"] / (ms / 1e3), 1),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
    if args.save:
        torch.save({"model": model.state_dict()}, args.save)


if __name__ == "__main__":
    main()
