"""The config tree: frozen dataclasses per section, the only place defaults live, each value checked on creation."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import yaml

from gptjax.config import warmup
from gptjax.errors import UserError

MAX_SEED = 2**63 - 1  # seeds go to numpy and JAX as int64
NAME_MAX = 255  # bytes in one file name (Linux, macOS)


class ConfigError(UserError):
    """A config the user must fix; the message is one line saying how."""


def _field(default: Any, help: str):
    # Mutable defaults are not a concern: every section is frozen.
    return dataclasses.field(default=default, metadata={"help": help})


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    n_vocab: int | None = _field(None, "vocabulary size; default: the data's (65 char-level, 50257 GPT-2); larger pads")
    n_ctx: int = _field(256, "context length in tokens (learned positions)")
    n_embd: int = _field(384, "model width D")
    n_head: int = _field(6, "attention heads H; must divide n_embd")
    n_layer: int = _field(6, "transformer blocks")
    dropout: float = _field(0.0, "dropout on embeddings and residual branches, in [0, 1)")
    bias: bool = _field(True, "biases in linear layers and LayerNorm (GPT-2: true)")
    compute_dtype: str = _field("auto", "auto (bfloat16 on GPU/TPU, float32 on CPU) | float32 | bfloat16")
    positions: str = _field("learned", "learned (GPT-2's table) | rope (rotary, on queries and keys)")
    norm: str = _field("layernorm", "layernorm (GPT-2) | rmsnorm (scale only, no mean or bias)")
    mlp: str = _field("gelu", "gelu (GPT-2, 4·D wide) | relu2 (ReLU², 4·D) | swiglu (gated, 8·D/3 wide)")
    qk_norm: bool = _field(False, "RMS-normalise queries and keys per head (learned gain) before attention")
    n_kv_head: int | None = _field(None, "key/value heads G (grouped-query; 1: multi-query); default: n_head")
    tie_embeddings: bool = _field(True, "unembed with the token table W_E (GPT-2); false: a separate W_U")
    logit_softcap: float = _field(0.0, "cap logits smoothly at ±c (c·tanh(logits/c)); 0 disables")
    zero_init_proj: bool = _field(False, "start W_O and W_down at zero: every block starts as the identity")
    unet_skips: bool = _field(False, "U-net: the last L/2 blocks each add an early block's output, mirrored, "
                                     "times a learned gain (1 at start)")
    embed_skips: bool = _field(False, "every block starts from λ₀·x + λ₁·x₀, x₀ the embeddings, λ learned "
                                      "from (1, 0)")
    value_embeds: int = _field(0, "E tables of value embeddings: the first E and the last E blocks mix their "
                                  "table's row for each token into its attention values (learned weights); 0: off")
    mtp_weight: float = _field(0.0, "multi-token prediction: a D x D map on the final hidden state, unembedded by the "
                                    "shared head, predicts token t+2; training adds its loss times this (evaluation "
                                    "and sampling stay next-token); 0: off")

    def __post_init__(self):
        self._check_knobs()
        for name in ("n_ctx", "n_embd", "n_head", "n_layer"):
            _check(getattr(self, name) > 0, f"model.{name} must be positive, got {getattr(self, name)}")
        _check(self.n_vocab is None or self.n_vocab > 0, f"model.n_vocab must be positive, got {self.n_vocab}")
        _check(self.n_embd % self.n_head == 0,
               f"model.n_embd={self.n_embd} is not divisible by model.n_head={self.n_head}; "
               f"pick n_embd as a multiple of n_head")
        _check(0.0 <= self.dropout < 1.0, f"model.dropout must be in [0, 1), got {self.dropout}")
        _check(self.compute_dtype in ("auto", "float32", "bfloat16"),
               f"model.compute_dtype must be auto, float32 or bfloat16, got {self.compute_dtype!r}")

    def _check_knobs(self):
        for name, choices in (("positions", ("learned", "rope")), ("norm", ("layernorm", "rmsnorm")),
                              ("mlp", ("gelu", "relu2", "swiglu"))):
            _check(getattr(self, name) in choices,
                   f"model.{name} must be {' or '.join(choices)}, got {getattr(self, name)!r}")
        _check(self.n_kv_head is None or (self.n_kv_head > 0 and self.n_head % self.n_kv_head == 0),
               f"model.n_kv_head={self.n_kv_head} must be positive and divide model.n_head={self.n_head}")
        _check(self.logit_softcap >= 0 and math.isfinite(self.logit_softcap),
               f"model.logit_softcap must be a finite number >= 0 (0 disables), got {self.logit_softcap}")
        _check(self.positions != "rope" or self.n_head <= 0 or (self.n_embd // self.n_head) % 2 == 0,
               f"model.positions=rope rotates pairs of dimensions: head size n_embd/n_head must be even, "
               f"got {self.n_embd}/{self.n_head}")
        _check(0 <= self.value_embeds <= self.n_layer // 2,
               f"model.value_embeds={self.value_embeds} must be in [0, n_layer/2]: the first and the last "
               f"value_embeds blocks share the tables, so they must not overlap (model.n_layer={self.n_layer})")
        _check(self.mtp_weight >= 0 and math.isfinite(self.mtp_weight),
               f"model.mtp_weight must be a finite number >= 0 (0: off), got {self.mtp_weight}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def mlp_dim(self) -> int:
        # SwiGLU's third matrix is paid for by a narrower hidden layer (Shazeer 2020): 8D/3, not 4D.
        return 8 * self.n_embd // 3 if self.mlp == "swiglu" else 4 * self.n_embd

    @property
    def is_gpt2(self) -> bool:
        """The architecture is GPT-2's (every knob on its default), so GPT-2 tools can read it."""
        return (self.positions, self.norm, self.mlp, self.qk_norm, self.kv_heads, self.tie_embeddings,
                self.logit_softcap, self.zero_init_proj, self.unet_skips, self.embed_skips, self.value_embeds,
                self.mtp_weight) == ("learned", "layernorm", "gelu", False, self.n_head, True, 0.0, False, False, False,
                                     0, 0.0)

    def value_table(self, layer: int) -> int | None:
        """Which value-embedding table block `layer` mixes in: the first E blocks and the last E (in order)
        use tables 0..E-1, as modded-nanogpt does; None for the blocks between."""
        E, L = self.value_embeds, self.n_layer
        return layer if layer < E else layer - (L - E) if layer >= L - E else None

    @property
    def n_params(self) -> int:
        """Closed-form parameter count (a tied unembedding adds nothing)."""
        assert self.n_vocab is not None, "resolve n_vocab from the data first"
        D, F, L, b = self.n_embd, self.mlp_dim, self.n_layer, int(self.bias)
        KV = self.kv_heads * self.head_dim       # width of the keys (and of the values)
        norm = (1 + b) * D if self.norm == "layernorm" else D
        attention = 2 * D * D + 2 * D * KV + b * (2 * D + 2 * KV)  # W_Q, W_O, W_K, W_V and biases
        attention += 2 * self.head_dim * self.qk_norm             # gains of the query and key norms
        gated = self.mlp == "swiglu"
        mlp = (2 + gated) * D * F + b * ((1 + gated) * F + D)
        tables = (1 + (not self.tie_embeddings)) * self.n_vocab * D + self.n_ctx * D * (self.positions == "learned")
        # The speedrun's: U-net gains, x₀ mixes per block, value tables and the mixes of their 2E blocks.
        speedrun = self.unet_skips * (L // 2) + self.embed_skips * 2 * L + self.value_embeds * (self.n_vocab * KV + 4)
        speedrun += bool(self.mtp_weight) * D * D  # the multi-token head's map W_MTP
        return tables + L * (2 * norm + attention + mlp) + norm + speedrun

    @property
    def n_compute_params(self) -> int:
        """N of the 6N in flops_per_token and of train.tokens_per_param: every parameter but the tables that are
        only looked up (learned positions; the input token table when W_U is separate). A tied token table
        counts once, for its matmul work as the unembedding; biases and norm gains count (under 0.2%)."""
        looked_up = self.n_ctx * (self.positions == "learned") + self.n_vocab * (not self.tie_embeddings)
        # Value-embedding tables (model.value_embeds) are only looked up too; their mixes count as gains do.
        value_tables = self.value_embeds * self.n_vocab * self.kv_heads * self.head_dim
        return self.n_params - looked_up * self.n_embd - value_tables

    def flops_per_token(self, causal_half: bool = False, n_ctx: int | None = None) -> int:
        """Training FLOPs per token (forward + backward, one multiply-add = 2 FLOPs): 6N + 12·L·T·D.

        6N (N: n_compute_params) is the matmuls of the forward pass (2N) and of the backward pass (4N: input
        and weight gradients); 12·L·T·D is attention's two T-long products (QKᵀ and the weighting of V), 4·T·D
        forward per layer, for all T keys of every query, as PaLM (appendix B), nanoGPT's MFU and Chinchilla
        (appendix F) count them. causal_half counts only the keys a causal query sees (half: 6·L·T·D), as
        Kaplan et al. 2020's C = 6N + 6·L·T·D does. Elementwise work (norms, activations, softmax, RoPE's
        rotation, QK-norm, soft-capping, the optimizer) is left out: a few percent of XLA's own count at
        matmul-bound shapes (tests/test_flops.py). How the knobs enter: SwiGLU's third matrix and its 8D/3
        width, grouped K/V heads (narrower W_K, W_V; the scores still have H heads) and an untied W_U through N;
        relu2, RoPE, qk_norm and logit_softcap add no matmul work. model.mtp_weight adds its map W_MTP through N
        and a second use of the unembedding (6·V·D; its last position is skipped, counted all the same). n_ctx: the
        window T the tokens are trained in (a sequence-length warm-up's shorter ones); default model.n_ctx.
        """
        attention = 12 * self.n_layer * (n_ctx or self.n_ctx) * self.n_embd
        mtp_unembed = 6 * self.n_vocab * self.n_embd * bool(self.mtp_weight)
        return 6 * self.n_compute_params + mtp_unembed + (attention // 2 if causal_half else attention)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    source: str = _field("shakespeare", "shakespeare | .txt/.jsonl/.parquet[.gz|.zst] file, glob, a,b list or folder "
                         "of shards | nanoGPT train.bin/val.bin folder | hf:NAME[:CONFIG]")
    tokenizer: str = _field("char", "char (vocabulary from the corpus) | gpt2 (GPT-2 BPE) | path of a Hugging Face "
                            "tokenizer.json or its folder (gptjax tokenizer train writes one)")
    text_field: str = _field("text", "column holding the text in .jsonl/.parquet/hub datasets")
    val_fraction: float = _field(0.1, "share of documents held out for validation, by a hash of each document's index")
    cache_dir: str = _field("", "where tokenized data is cached; empty: $GPTJAX_CACHE or ~/.cache/gptjax")
    num_proc: int = _field(0, "processes that tokenize; 0: one per core")
    chunk_chars: int = _field(1 << 20, "characters per tokenizing task; memory grows with num_proc x it, not corpus")

    def __post_init__(self):
        # A file path holds a separator or names a .json; anything else is a misspelt kind.
        _check(self.tokenizer in ("char", "gpt2") or "/" in self.tokenizer or self.tokenizer.endswith(".json"),
               f"data.tokenizer must be char, gpt2 or the path of a tokenizer.json, got {self.tokenizer!r}")
        _check(0.0 < self.val_fraction < 1.0, f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        _check(bool(self.source), "data.source is empty; use shakespeare, a file path or hf:NAME")
        _check(self.num_proc >= 0 and self.chunk_chars >= 1024, "data.num_proc must be >= 0 (0: one per core) and "
               f"data.chunk_chars >= 1024, got {self.num_proc} and {self.chunk_chars}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = _field(5000, "optimizer steps to train for (or set by one of the two budgets below)")
    flops_budget: float = _field(0.0, "train to this compute, e.g. 1e15: steps = budget / (model.flops_per_token x "
                                      "tokens per step), rounded down; 0: off (docs/training.md)")
    tokens_per_param: float = _field(0.0, "train on this many tokens per parameter (Chinchilla: 20): steps = "
                                          "ratio x N / tokens per step, N as in the FLOP count's 6N; 0: off")
    batch_size: int = _field(64, "sequences per optimizer step (global, all devices)")
    grad_accum: int = _field(1, "micro-batches per step; batch_size is split into this many")
    lr: float = _field(1e-3, "peak learning rate")
    min_lr: float = _field(1e-4, "learning rate at the end of the cosine decay")
    warmup_steps: int = _field(100, "linear warmup steps from 0 to lr")
    lr_decay_steps: int | None = _field(None, "cosine decay length incl. warmup; default: steps")
    weight_decay: float = _field(0.1, "AdamW decoupled weight decay on matrices and embeddings")
    beta1: float = _field(0.9, "AdamW beta1")
    beta2: float = _field(0.99, "AdamW beta2")
    eps: float = _field(1e-8, "AdamW epsilon")
    optimizer: str = _field("adamw", "adamw | muon (matrices; AdamW for tables, gains, biases) | lion (sign updates)")
    muon_lr: float = _field(0.02, "muon: peak learning rate of the matrices (train.lr drives the AdamW part)")
    muon_iteration: str = _field("newton_schulz", "muon: how updates are orthogonalised: newton_schulz (one fixed "
                                                  "quintic, 5 times) | polar_express (an optimal quintic per step)")
    normuon: bool = _field(False, "muon: NorMuon: even out each neuron's share of the orthogonalised update by an "
                                  "EMA (beta2 0.95) of its mean square, the update's RMS kept")
    cautious_wd: bool = _field(False, "decay weights only where the update and the weight share a sign "
                                      "(cautious weight decay; every optimizer)")
    grad_clip: float = _field(1.0, "global gradient-norm clip; 0 disables")
    seed: int = _field(1337, "seed for init, data order and dropout")
    eval_every: int = _field(250, "evaluate (and checkpoint) every this many steps")
    checkpoint_every: int | None = _field(None, "also checkpoint every this many steps; default: eval_every")
    on_nonfinite: str = _field("stop", "on a non-finite loss or gradient: stop | skip (the update) | rollback")
    max_skips: int = _field(10, "on_nonfinite=skip: stop after more than this many updates in a row are skipped")
    eval_batches: int = _field(20, "fixed batches per split for each evaluation")
    log_every: int = _field(10, "write a metrics.jsonl line every this many steps")
    target_val_loss: float = _field(0.0, "stop at the first evaluation whose val loss is at or below this "
                                         "(time-to-target runs); 0: off")
    cooldown_frac: float = _field(0.0, "trapezoidal schedule: warm-up, constant, then linear down to min_lr over "
                                       "this share of the decay steps; 0: warm-up + cosine")
    head_lr: float = _field(0.0, "peak learning rate of the untied unembedding W_U (model.tie_embeddings=false, "
                                 "AdamW); 0: train.lr")
    batch_warmup_steps: int = _field(0, "batch-size warm-up: steps before N/2 train on the first quarter of their "
                                        "batch's rows, steps before N on the first half; 0: off")
    seq_warmup_steps: int = _field(0, "sequence-length warm-up: steps before N/2 train on the first n_ctx/4 tokens "
                                      "of each window, steps before N on the first n_ctx/2; 0: off")
    init_from: str = _field("", "fine-tune: start from a run dir, HF GPT-2 folder or gpt2[-medium|-large|-xl]")

    def __post_init__(self):
        for name in ("steps", "batch_size", "grad_accum", "eval_every", "eval_batches", "log_every"):
            _check(getattr(self, name) > 0, f"train.{name} must be positive, got {getattr(self, name)}")
        _check(self.checkpoint_every is None or self.checkpoint_every > 0,
               f"train.checkpoint_every must be positive, got {self.checkpoint_every}")
        for name in ("flops_budget", "tokens_per_param"):
            _check(math.isfinite(getattr(self, name)) and getattr(self, name) >= 0,
                   f"train.{name} must be a number >= 0 (0: off), got {getattr(self, name)}")
        _check(not (self.flops_budget and self.tokens_per_param),
               "train.flops_budget and train.tokens_per_param both set: a run's length comes from one of them")
        _check(self.max_skips >= 0, f"train.max_skips must be >= 0, got {self.max_skips}")
        for name in ("batch_warmup_steps", "seq_warmup_steps"):
            _check(getattr(self, name) >= 0, f"train.{name} must be >= 0 (0: off), got {getattr(self, name)}")
        _check(self.optimizer in ("adamw", "muon", "lion"),
               f"train.optimizer must be adamw, muon or lion, got {self.optimizer!r}")
        self._check_muon_levers()
        _check(self.on_nonfinite in ("stop", "skip", "rollback"),
               f"train.on_nonfinite must be stop, skip or rollback, got {self.on_nonfinite!r}")
        _check(self.batch_size % self.grad_accum == 0,
               f"train.batch_size={self.batch_size} is not divisible by train.grad_accum={self.grad_accum}")
        _check(self.warmup_steps >= 0, f"train.warmup_steps must be >= 0, got {self.warmup_steps}")
        _check(self.lr_decay_steps is None or self.lr_decay_steps > self.warmup_steps,
               "train.lr_decay_steps must exceed train.warmup_steps")
        _check(0 <= self.cooldown_frac <= 1,
               f"train.cooldown_frac must be in [0, 1] (0: cosine), got {self.cooldown_frac}")
        for name in ("lr", "min_lr", "weight_decay", "grad_clip", "eps", "muon_lr", "target_val_loss", "head_lr"):
            _check(getattr(self, name) >= 0 and math.isfinite(getattr(self, name)),
                   f"train.{name} must be a finite number >= 0, got {getattr(self, name)}")
        _check(0 <= self.seed <= MAX_SEED, f"train.seed must be between 0 and {MAX_SEED}, got {self.seed}")
        _check(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "train.beta1 and train.beta2 must be in [0, 1)")

    def _check_muon_levers(self):
        _check(self.muon_iteration in ("newton_schulz", "polar_express"),
               f"train.muon_iteration must be newton_schulz or polar_express, got {self.muon_iteration!r}")
        for name, on in (("muon_iteration", self.muon_iteration != "newton_schulz"), ("normuon", self.normuon)):
            _check(not on or self.optimizer == "muon", f"train.{name}={getattr(self, name)} changes Muon's "
                   f"update, but train.optimizer={self.optimizer}: also set train.optimizer=muon")

    @property
    def micro_batch_size(self) -> int:
        return self.batch_size // self.grad_accum

    @property
    def decay_steps(self) -> int:
        return self.lr_decay_steps or self.steps

    @property
    def save_every(self) -> int:
        return self.checkpoint_every or self.eval_every


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    data: int = _field(-1, "data-parallel axis size; -1: all devices not used by fsdp")
    fsdp: int = _field(1, "fully-sharded axis size: parameters and optimizer state split across it")

    def __post_init__(self):
        _check(self.data == -1 or self.data > 0, f"mesh.data must be -1 or positive, got {self.data}")
        _check(self.fsdp == -1 or self.fsdp > 0, f"mesh.fsdp must be -1 or positive, got {self.fsdp}")
        _check(not (self.data == -1 and self.fsdp == -1), "only one of mesh.data and mesh.fsdp may be -1")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    out_dir: str = _field("", "run directory; empty: runs/<config name>")
    wandb: str = _field("off", "off | offline | online")
    wandb_project: str = _field("gptjax", "wandb project name")
    wandb_group: str = _field("", "wandb group gathering related runs (a sweep sets it to the sweep's name); "
                                  "empty: none")
    keep_checkpoints: int = _field(2, "latest checkpoints kept (the best by val loss is kept too)")
    progress: bool = _field(True, "show a progress bar")

    def __post_init__(self):
        _check(self.wandb in ("off", "offline", "online"),
               f"run.wandb must be off, offline or online, got {self.wandb!r}")
        _check(self.keep_checkpoints > 0, f"run.keep_checkpoints must be positive, got {self.keep_checkpoints}")
        longest = max((len(part.encode("utf-8", "surrogateescape")) for part in self.out_dir.split("/")), default=0)
        _check(longest <= NAME_MAX, f"run.out_dir has a folder name of {longest} bytes, more than the {NAME_MAX} "
                                    f"a file system allows; give a shorter name")


@dataclasses.dataclass(frozen=True)
class Config:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)

    def __post_init__(self):
        _check(not (self.train.head_lr and self.model.tie_embeddings),
               "train.head_lr sets the untied unembedding's learning rate: also set model.tie_embeddings=false")
        _check(not self.train.head_lr or self.train.lr > 0, "train.head_lr needs train.lr > 0 (it scales the "
                                                            "head's AdamW step by head_lr / lr)")

    @property
    def tokens_per_step(self) -> int:
        return self.train.batch_size * self.model.n_ctx

    def resolve_vocab(self, data_vocab: int) -> Config:
        """model.n_vocab defaults to the data's vocabulary; smaller is an error, larger pads."""
        if self.model.n_vocab is None:
            return self.replace(model={"n_vocab": data_vocab})
        _check(self.model.n_vocab >= data_vocab,
               f"model.n_vocab={self.model.n_vocab} is smaller than the data's vocabulary of {data_vocab}; "
               f"remove model.n_vocab or set it to at least {data_vocab}")
        return self

    def resolve_steps(self) -> Config:
        """train.steps from a compute budget (train.flops_budget or train.tokens_per_param), n_vocab resolved.
        A batch or sequence warm-up's smaller steps are counted as what they are (gptjax.config.warmup)."""
        t, per_step = self.train, self.tokens_per_step
        if not (t.flops_budget or t.tokens_per_param):
            return self
        flops = self.model.flops_per_token() * per_step
        if t.flops_budget:
            steps = warmup.steps_within(self, t.flops_budget,
                                        lambda rows, n: rows * n * self.model.flops_per_token(n_ctx=n))
            what = f"train.flops_budget={t.flops_budget:g}"
        else:
            tokens = t.tokens_per_param * self.model.n_compute_params
            steps = warmup.steps_within(self, tokens, lambda rows, n: rows * n)
            what = f"train.tokens_per_param={t.tokens_per_param:g}"
        _check(steps > 0, f"{what} buys no step: one step costs {flops:.3g} FLOPs ({per_step} tokens x "
                          f"{self.model.flops_per_token():,} FLOPs per token); raise it, or shrink the model or batch")
        return self.replace(train={"steps": steps})

    def replace(self, **sections: dict[str, Any]) -> Config:
        """A copy with some keys changed: cfg.replace(model={"n_vocab": 65})."""
        return dataclasses.replace(self, **{
            name: dataclasses.replace(getattr(self, name), **values) for name, values in sections.items()})

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)
