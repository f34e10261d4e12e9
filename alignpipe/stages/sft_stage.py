"""SFT: completion-only fine-tuning of the base model (IMDb reviews, TL;DR summaries, HH's preferred replies)."""
from __future__ import annotations

import random

import torch

from alignpipe.data import sft_examples
from alignpipe.models import default_device, load_base_model
from alignpipe.sft import SFTObjective, evaluate_nll
from alignpipe.stages.base import StageContext, StageSpec
from alignpipe.stages.common import HistoryLogger, apply_lora, publish_training
from alignpipe.tokenization import tokenize_examples
from alignpipe.train.loop import train


def config_slice(cfg) -> dict:
    return {"model": cfg.model.model_dump(), "data": cfg.data.model_dump(), "sft": cfg.sft.model_dump()}


def run(ctx: StageContext) -> dict[str, float]:
    cfg, scfg = ctx.cfg, ctx.cfg.sft
    model, tok = load_base_model(cfg.model.name_or_path, cfg.model.gguf_file, cfg.model.offline_fallback)
    model = model.to(default_device())
    records = sft_examples(cfg.data, cfg.data.sft_size)
    if cfg.model.chat_template:
        records = [{"prompt": [{"role": "user", "content": r["prompt"]}], "completion": r["completion"]} if r["prompt"] else r for r in records]
    random.Random(scfg.seed).shuffle(records)
    n_eval = int(len(records) * scfg.eval_fraction)
    examples, stats = tokenize_examples(tok, records[n_eval:], max_length=scfg.max_length, max_prompt_length=scfg.max_prompt_length)
    eval_examples, _ = tokenize_examples(tok, records[:n_eval], max_length=scfg.max_length, max_prompt_length=scfg.max_prompt_length)

    torch.manual_seed(scfg.seed)  # LoRA's initial weights: reproducible like everything else
    model = apply_lora(model, scfg.lora)
    before = evaluate_nll(model, eval_examples, tok.pad_token_id)
    result = train(
        model,
        examples,
        SFTObjective(tok.pad_token_id),
        scfg,
        checkpoint_dir=ctx.resume_dir,
        callbacks=[HistoryLogger(ctx.sink, "sft")],
        desc="SFT",
    )
    after = evaluate_nll(model, eval_examples, tok.pad_token_id)
    metrics = {
        "train_loss": result.final["loss"],
        "steps": float(result.steps),
        "seconds": result.seconds,
        "tokens_per_s": sum(h["tokens_per_s"] for h in result.history) / len(result.history),
        **{f"initial_{k}": v for k, v in before.items()},
        **after,
        **stats.as_metrics("data"),
    }
    publish_training(ctx.out_dir, model, tok, result.history, metrics)
    return metrics


SPEC = StageSpec(
    name="sft",
    upstream=(),
    version="3",  # 3: trained with dropout off (as the paper); 2: the saved config no longer carries the GGUF quantization_config
    config_slice=config_slice,
    run=run,
    artifacts=("history.jsonl", "metrics.json"),
    uses_gpu=True,
)
