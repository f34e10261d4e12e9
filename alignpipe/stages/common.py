"""Helpers every stage shares: loading and saving models, JSONL tables, LoRA, rank-0 writes."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import torch

from alignpipe.models import default_device, load_causal_lm, load_tokenizer, resolve_dtype
from alignpipe.stages.artifacts import HISTORY_FILE, MODEL_DIR, write_jsonl
from alignpipe.stages.base import MetricsSink
from alignpipe.train.sharding import unsharded_copy
from pipeline_config.schema import LoraConfig




def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def load_stage_model(stage_dir: Path, dtype: str, device: Optional[torch.device] = None):
    """(model, tokenizer) saved by an upstream training stage, on the right device and dtype (model.dtype)."""
    device = device or default_device()
    path = stage_dir / MODEL_DIR
    model = load_causal_lm(path, dtype=resolve_dtype(dtype, device)).to(device).eval()
    return model, load_tokenizer(path)


def load_trainable(stage_dir: Path, device: Optional[torch.device] = None):
    """fp32 weights, as training keeps them (the loop's autocast runs bf16 compute on GPU); also
    what the reference log-probs are computed from, so that they match the policy at step 0."""
    device = device or default_device()
    path = stage_dir / MODEL_DIR
    return load_causal_lm(path, dtype=torch.float32).to(device), load_tokenizer(path)


def apply_lora(model, lora: Optional[LoraConfig]):
    if lora is None:
        return model
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    return get_peft_model(
        model,
        PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.target_modules), task_type="CAUSAL_LM"),
    )


def save_model(model, tokenizer, out_dir: Path) -> Path:
    """A `from_pretrained`-loadable directory; LoRA adapters are merged so downstream loads one model."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    path = out_dir / MODEL_DIR
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def publish_training(out_dir: Path, model, tokenizer, history: list[dict], metrics: dict[str, float]) -> None:
    """A training stage's outputs: the model, its step history and headline metrics (main process only).
    Every process calls it: under FSDP the main process first gathers the full model from the shards."""
    model = unsharded_copy(model)
    if not is_main_process():
        return
    save_model(model, tokenizer, out_dir)
    write_jsonl(out_dir / HISTORY_FILE, history)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))


class HistoryLogger:
    """A training-loop callback: streams step metrics to the sink and keeps them for history.jsonl."""

    def __init__(self, sink: MetricsSink, prefix: str):
        self.sink, self.prefix = sink, prefix

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        if is_main_process():
            self.sink.log_metrics({f"{self.prefix}/{k}": float(v) for k, v in metrics.items() if k != "step"}, step=step)
