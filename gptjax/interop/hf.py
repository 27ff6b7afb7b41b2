"""The Hugging Face GPT-2 format: config.json <-> ModelConfig, and its tensors <-> gptjax parameters.

Needs only numpy and safetensors (torch only to read a legacy `pytorch_model.bin`).
GPT-2's Conv1D layers store weights as (in, out), the transpose of `nn.Linear` and already
gptjax's orientation, so no tensor is transposed: c_attn (D, 3D) splits on its output axis
into Q, K, V, each (D, H·K) with each head's K columns contiguous, so a reshape gives
wq_dhk; c_proj's rows are those same merged head outputs, so (H·K, D) reshapes to wo_hkd.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from gptjax.config import ModelConfig
from gptjax.errors import UserError, first_line
from gptjax.files import ReadError, read_json

HUB_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
GPT2_VOCAB = 50257
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
# config.json's sizes and GPT-2's defaults for those it leaves out.
SIZES = {"vocab_size": GPT2_VOCAB, "n_positions": 1024, "n_embd": 768, "n_head": 12, "n_layer": 12}
# Causal-mask buffers that older files store beside the weights; gptjax builds its mask itself.
BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias")
# GPT-2 settings gptjax's model hard-codes: (key, accepted values, what gptjax does).
FIXED = (("activation_function", ("gelu_new", "gelu_pytorch_tanh"), "tanh GELU (gelu_new)"),
         ("layer_norm_epsilon", (1e-5,), "LayerNorm epsilon 1e-5"),
         ("scale_attn_weights", (True,), "attention scaled by 1/sqrt(head size)"),
         ("scale_attn_by_inverse_layer_idx", (False,), "no per-layer attention scaling"),
         ("add_cross_attention", (False,), "no cross-attention"),
         ("tie_word_embeddings", (True,), "a tied unembedding"))


class ConvertError(UserError):
    """A checkpoint that is not a GPT-2 gptjax can read or write; the message says why."""


def model_config(hf: dict, where: Path | str) -> ModelConfig:
    """gptjax's model section for a GPT-2 config.json; anything gptjax would compute differently is an error."""
    if hf.get("model_type", "gpt2") != "gpt2":
        raise ConvertError(f"{where} holds a {hf['model_type']!r} model, not GPT-2; only GPT-2 checkpoints convert")
    for key, accepted, meaning in FIXED:
        value = hf.get(key, accepted[0])
        if value not in accepted:
            raise ConvertError(f"{where}: config.json has {key}={value!r}, but gptjax's GPT-2 uses {meaning}; "
                               f"this checkpoint cannot be reproduced exactly")
    sizes = {key: _size(hf, key, default, where) for key, default in SIZES.items()}
    n_embd = sizes["n_embd"]
    if hf.get("n_inner") is not None and _size(hf, "n_inner", None, where) != 4 * n_embd:
        raise ConvertError(f"{where}: config.json has n_inner={hf['n_inner']}, "
                           f"but gptjax's MLP is 4*n_embd={4 * n_embd}")
    return ModelConfig(n_vocab=sizes["vocab_size"], n_ctx=sizes["n_positions"], n_embd=n_embd,
                       n_head=sizes["n_head"], n_layer=sizes["n_layer"], dropout=0.0, bias=True)


def _size(hf: dict, key: str, default: int | None, where) -> int:
    """A size from config.json: a positive integer (not "32", 2.0, true or [2], which JSON allows)."""
    value = hf.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConvertError(f"{where}: config.json has {key}={json.dumps(value)[:40]}, but it must be a positive "
                           f"integer; fix config.json")
    return value


def hf_config(cfg: ModelConfig, eos_id: int | None) -> dict:
    """A config.json that transformers' GPT2LMHeadModel reads as this model."""
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": cfg.n_vocab,
            "n_positions": cfg.n_ctx, "n_ctx": cfg.n_ctx, "n_embd": cfg.n_embd, "n_head": cfg.n_head,
            "n_layer": cfg.n_layer, "n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
            # gptjax drops out embeddings and residual branches, never attention probabilities.
            "embd_pdrop": cfg.dropout, "resid_pdrop": cfg.dropout, "attn_pdrop": 0.0, "initializer_range": 0.02,
            "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
            "tie_word_embeddings": True, "bos_token_id": eos_id, "eos_token_id": eos_id, "torch_dtype": "float32"}


def to_params(tensors: dict[str, np.ndarray], cfg: ModelConfig, where: Path | str) -> dict:
    """gptjax's parameters (a pure dict, as nnx.to_pure_dict gives) from a GPT-2 state dict."""
    left = {k.removeprefix("transformer."): v for k, v in tensors.items() if not k.endswith(BUFFER_SUFFIXES)}

    def take(name: str, *shape: int) -> np.ndarray:
        if name not in left:
            raise ConvertError(f"{where} has no tensor {name!r}; is it a GPT-2 checkpoint matching its config.json?")
        array = left.pop(name)
        if array.shape != shape:
            raise ConvertError(f"{where}: {name} has shape {array.shape}, but config.json implies {shape}")
        if array.dtype.kind != "f":  # int8, bool: quantized or not weights at all; a cast would invent values
            raise ConvertError(f"{where}: {name} holds {array.dtype} values; only float weights convert "
                               f"(float16, bfloat16, float32, float64, each widened to float32 exactly)")
        return np.asarray(array, np.float32)  # float32 stays the same array: bit-exact

    D = cfg.n_embd
    params = {"wte_vd": take("wte.weight", cfg.n_vocab, D), "wpe_td": take("wpe.weight", cfg.n_ctx, D),
              "blocks": {i: _block(take, f"h.{i}.", cfg) for i in range(cfg.n_layer)},
              "ln_f": {"scale_d": take("ln_f.weight", D), "bias_d": take("ln_f.bias", D)}}
    lm_head = left.pop("lm_head.weight", None)
    if lm_head is not None and not np.array_equal(lm_head, params["wte_vd"]):
        raise ConvertError(f"{where}: lm_head.weight differs from wte.weight; gptjax's GPT-2 ties them")
    if left:
        raise ConvertError(f"{where} has tensors its config.json does not explain: {', '.join(sorted(left)[:4])}")
    return params


def _block(take, p: str, cfg: ModelConfig) -> dict:
    """One transformer block's parameters; `take(name, *shape)` pops a checked tensor."""
    D, H, K = cfg.n_embd, cfg.n_head, cfg.head_dim
    wq, wk, wv = np.split(take(f"{p}attn.c_attn.weight", D, 3 * D), 3, axis=1)
    bq, bk, bv = np.split(take(f"{p}attn.c_attn.bias", 3 * D), 3)
    attn = {"wq_dhk": wq.reshape(D, H, K), "wk_dhk": wk.reshape(D, H, K), "wv_dhk": wv.reshape(D, H, K),
            "bq_hk": bq.reshape(H, K), "bk_hk": bk.reshape(H, K), "bv_hk": bv.reshape(H, K),
            "wo_hkd": take(f"{p}attn.c_proj.weight", D, D).reshape(H, K, D), "bo_d": take(f"{p}attn.c_proj.bias", D)}
    mlp = {"w_up_df": take(f"{p}mlp.c_fc.weight", D, 4 * D), "b_up_f": take(f"{p}mlp.c_fc.bias", 4 * D),
           "w_down_fd": take(f"{p}mlp.c_proj.weight", 4 * D, D), "b_down_d": take(f"{p}mlp.c_proj.bias", D)}
    return {"ln_1": {"scale_d": take(f"{p}ln_1.weight", D), "bias_d": take(f"{p}ln_1.bias", D)}, "attn": attn,
            "ln_2": {"scale_d": take(f"{p}ln_2.weight", D), "bias_d": take(f"{p}ln_2.bias", D)}, "mlp": mlp}


def to_tensors(params: dict, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """The GPT-2 state dict (transformers' key names, lm_head left to the tie) of gptjax's parameters."""
    D = cfg.n_embd

    def get(tree: dict, name: str, size: int) -> np.ndarray:
        # A run trained with model.bias=false has no biases: zeros compute exactly the same function.
        return np.asarray(tree[name], np.float32) if name in tree else np.zeros(size, np.float32)

    out = {"transformer.wte.weight": params["wte_vd"], "transformer.wpe.weight": params["wpe_td"]}
    for i, blk in params["blocks"].items():
        p, attn, mlp = f"transformer.h.{i}.", blk["attn"], blk["mlp"]
        out |= {
            f"{p}attn.c_attn.weight": np.concatenate([attn[f"w{x}_dhk"].reshape(D, D) for x in "qkv"], axis=1),
            f"{p}attn.c_attn.bias": np.concatenate([get(attn, f"b{x}_hk", D).reshape(D) for x in "qkv"]),
            f"{p}attn.c_proj.weight": attn["wo_hkd"].reshape(D, D), f"{p}attn.c_proj.bias": get(attn, "bo_d", D),
            f"{p}mlp.c_fc.weight": mlp["w_up_df"], f"{p}mlp.c_fc.bias": get(mlp, "b_up_f", 4 * D),
            f"{p}mlp.c_proj.weight": mlp["w_down_fd"], f"{p}mlp.c_proj.bias": get(mlp, "b_down_d", D)}
        for ln in ("ln_1", "ln_2"):
            out |= {f"{p}{ln}.weight": blk[ln]["scale_d"], f"{p}{ln}.bias": get(blk[ln], "bias_d", D)}
    out |= {"transformer.ln_f.weight": params["ln_f"]["scale_d"],
            "transformer.ln_f.bias": get(params["ln_f"], "bias_d", D)}
    return {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}


# ---------------------------------------------------------------------------
# Files

def locate(spec: str) -> Path:
    """A local Hugging Face GPT-2 folder, or one of OpenAI's GPT-2s downloaded from the hub (needs network)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if spec not in HUB_NAMES:
        raise ConvertError(f"{spec!r} is neither a local folder nor a hub model ({', '.join(HUB_NAMES)})")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(f"openai-community/{spec}", allow_patterns=["config.json", "model.safetensors"]))
    except Exception as e:  # offline, hub errors: one line either way
        raise ConvertError(f"cannot download {spec} from the Hugging Face hub (needs network): "
                           f"{first_line(e)}") from None


def load_config(src: Path) -> dict:
    try:  # bounded: a FIFO in its place would block, 20,000 nested `[` would overflow the parser
        hf = read_json(src / "config.json")
    except FileNotFoundError:
        raise ConvertError(f"{src} has no config.json; give a Hugging Face GPT-2 folder (config.json + "
                           f"model.safetensors)") from None
    except (OSError, ReadError) as e:
        raise ConvertError(f"{src / 'config.json'} cannot be read: {e}; restore it from the model's source") from None
    if not isinstance(hf, dict):
        raise ConvertError(f"{src / 'config.json'} is not a JSON object")
    return hf


def read_tensors(src: Path) -> dict[str, np.ndarray]:
    """Every tensor in the folder's weights file (or its shards, if an index names them)."""
    name = next((n for n in WEIGHT_FILES if (src / n).is_file()), None)
    if name is None:
        raise ConvertError(f"{src} has no model.safetensors or pytorch_model.bin; give a Hugging Face GPT-2 folder")
    files = _shards(src, name) if name.endswith(".index.json") else [src / name]
    tensors = {}
    for path in files:
        tensors |= _read_safetensors(path) if path.suffix == ".safetensors" else _read_torch(path)
    return tensors


def _shards(src: Path, index: str) -> list[Path]:
    """The shard files an index names, all inside `src`: a path out of it (absolute, ../) is refused."""
    try:
        weight_map = read_json(src / index, max_bytes=64 << 20).get("weight_map")
    except (OSError, ReadError, AttributeError) as e:
        raise ConvertError(f"{src / index} cannot be read as a shard index: {str(e)[:120]}") from None
    if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
        raise ConvertError(f"{src / index} has no \"weight_map\" of tensor names to shard files; "
                           f"restore it from the model's source")
    root, files = src.resolve(), []
    for name in sorted(set(weight_map.values())):
        path = (src / name).resolve()
        if root not in path.parents:
            raise ConvertError(f"{src / index} names a shard outside {src}: {name!r}; only files in the "
                               f"model's folder are read")
        files.append(path)
    return files


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return load_file(path)
    except Exception as e:  # safetensors raises several types for damaged or unsupported files
        raise ConvertError(f"cannot read {path}: {first_line(e)}") from None


def _read_torch(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise ConvertError(f"reading {path.name} needs torch (pip install 'gptjax[hf]'), "
                           f"or save the model as model.safetensors") from None
    try:
        # weights_only: the unpickler accepts tensors and plain containers, never arbitrary code.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConvertError(f"cannot read {path} as a tensor file: {_torch_reason(e)}") from None
    if not isinstance(state, dict):
        raise ConvertError(f"{path} holds a {type(state).__name__}, not a state dict of named tensors; "
                           f"give a GPT-2 checkpoint saved with torch.save(model.state_dict())")
    # numpy has no bfloat16: widen it (other dtypes become float32 later, in to_params).
    return {k: (v.float() if v.dtype == torch.bfloat16 else v).numpy() for k, v in state.items()
            if isinstance(v, torch.Tensor)}


def _torch_reason(e: Exception) -> str:
    """Why torch.load refused, without its advice to load with weights_only=False (which runs the file's code)."""
    if "weights_only" not in str(e):
        return first_line(e)
    what = next((line.strip() for line in str(e).splitlines() if "GLOBAL" in line or "Unsupported" in line), "")
    return (f"it holds objects other than tensors, which gptjax never unpickles{f' ({what})' if what else ''}; "
            f"get the model as model.safetensors from a source you trust")


def write(out: Path, cfg: ModelConfig, params: dict, eos_id: int | None) -> None:
    """config.json + model.safetensors in `out`, loadable by GPT2LMHeadModel.from_pretrained."""
    from safetensors.numpy import save_file

    if not cfg.is_gpt2:
        raise ConvertError("this run's model is not GPT-2's architecture (model.positions, norm, mlp, qk_norm, "
                           "n_kv_head, tie_embeddings or logit_softcap changed); only GPT-2 runs export to HF")

    out.mkdir(parents=True, exist_ok=True)
    # transformers reads the "format" metadata to know the file came from a PyTorch-layout model.
    save_file(to_tensors(params, cfg), out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config(cfg, eos_id), indent=2) + "\n")
