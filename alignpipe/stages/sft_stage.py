"""SFT: completion-only fine-tuning of the base model (IMDb reviews, TL;DR summaries, HH's preferred replies)."""
from __future__ import annotations

import random
from typing import Annotated

import torch

from alignpipe.attention import check_trainable, packing_for
from alignpipe.data import describe_source, sft_examples
from alignpipe.data.provenance import source_of, task_dataset
from alignpipe.models import default_device, load_base_model
from alignpipe.sft import SFTObjective, evaluate_nll
from alignpipe.stages.artifacts import content_digest, dataset_record, write_datasets
from alignpipe.stages.base import StageContext, StageSpec
from alignpipe.stages.common import HistoryLogger, apply_lora, publish_training
from alignpipe.tokenization import as_chat, tokenize_examples
from alignpipe.train.loop import train
from pipeline_config.schema import DataConfig, ModelConfig, SFTConfig
from pipeline_config.slices import From, StageConfig


class SFTSlice(StageConfig):
    model: Annotated[ModelConfig, From("model")]
    data: Annotated[DataConfig, From("data")]
    sft: Annotated[SFTConfig, From("sft")]


def preflight(config: SFTSlice) -> None:
    """Read and validate the SFT data before any model loads: a bad file fails in one line."""
    records = sft_examples(config.data, config.data.sft_size)
    n_train = len(records) - int(len(records) * config.sft.eval_fraction)
    if n_train < config.sft.batch_size:
        raise ValueError(f"{describe_source(config.data)}: {n_train} SFT training examples are fewer than sft.batch_size {config.sft.batch_size}")


def run(ctx: StageContext) -> dict[str, float]:
    config: SFTSlice = ctx.config
    mcfg, scfg = config.model, config.sft
    model, tok = load_base_model(mcfg.name_or_path, mcfg.gguf_file, mcfg.offline_fallback, attention=mcfg.attention)
    model = model.to(default_device())
    check_trainable(model)
    packing = packing_for(model, scfg.packing, "sft.packing")
    raw = sft_examples(config.data, config.data.sft_size)
    records = [{**r, "prompt": as_chat(r["prompt"], mcfg.chat_template)} for r in raw]
    random.Random(scfg.seed).shuffle(records)
    n_eval = int(len(records) * scfg.eval_fraction)
    examples, stats = tokenize_examples(tok, records[n_eval:], max_length=scfg.max_length, max_prompt_length=scfg.max_prompt_length)
    eval_examples, _ = tokenize_examples(tok, records[:n_eval], max_length=scfg.max_length, max_prompt_length=scfg.max_prompt_length)

    torch.manual_seed(scfg.seed)  # LoRA's initial weights: reproducible like everything else
    model = apply_lora(model, scfg.lora)
    before = evaluate_nll(model, eval_examples, tok.pad_token_id, packing=scfg.packing)
    result = train(
        model,
        examples,
        SFTObjective(tok.pad_token_id, packing),
        scfg,
        checkpoint_dir=ctx.resume_dir,
        callbacks=[HistoryLogger(ctx.sink, "sft")],
        desc="SFT",
        say=lambda line: ctx.say(f"sft: {line}"),
        precision=mcfg.dtype,
    )
    after = evaluate_nll(model, eval_examples, tok.pad_token_id, packing=scfg.packing)
    metrics = {
        "train_loss": result.final["loss"],
        "steps": float(result.steps),
        "seconds": result.seconds,
        "tokens_per_s": sum(h["tokens_per_s"] for h in result.history) / len(result.history),
        "padding_fraction": sum(h["padding_fraction"] for h in result.history) / len(result.history),
        "packing": float(packing != "off"),
        **{f"initial_{k}": v for k, v in before.items()},
        **after,
        **stats.as_metrics("data"),
    }
    publish_training(ctx.out_dir, model, tok, result.history, metrics)
    source, kind = source_of(config.data, task_dataset(config.data))
    write_datasets(ctx.out_dir, [dataset_record("sft-examples", content_digest(raw), source, len(raw), "training", kind)])
    return metrics


SPEC = StageSpec(
    name="sft",
    upstream=(),
    config=SFTSlice,
    run=run,
    artifacts=("history.jsonl", "metrics.json"),
    uses_gpu=True,
    preflight=preflight,
)
