"""DPO training of the SFT model on the reference stage's tokenized pairs and stored log-probs."""
from __future__ import annotations

from typing import Annotated, Literal

import torch

from alignpipe.attention import check_trainable
from alignpipe.dpo.objective import DPOObjective, PreferenceItem
from alignpipe.dpo.scoring import pair_layout, resolve_prefix_sharing
from alignpipe.models import use_attention
from alignpipe.stages.artifacts import REFERENCE_FILE, dataset_record, file_digest, read_reference, write_datasets
from alignpipe.stages.base import StageContext, StageSpec
from alignpipe.stages.common import HistoryLogger, apply_lora, load_trainable, publish_training
from alignpipe.train.loop import train
from pipeline_config.schema import DPOConfig
from pipeline_config.slices import From, StageConfig


class DPOSlice(StageConfig):
    dpo: Annotated[DPOConfig, From("dpo")]
    dtype: Annotated[Literal["auto", "float32", "bfloat16"], From("model.dtype")]  # the training autocast
    attention: Annotated[Literal["sdpa", "flex_attention", "eager"], From("model.attention")]


def run(ctx: StageContext) -> dict[str, float]:
    config: DPOSlice = ctx.config
    dcfg = config.dpo
    say = lambda line: ctx.say(f"dpo: {line}")  # noqa: E731
    model, tok = load_trainable(ctx.inputs["sft"])
    use_attention(model, config.attention)
    check_trainable(model)
    ref = read_reference(ctx.inputs["reference"])
    items = [PreferenceItem(p, float(c), float(r)) for p, c, r in zip(ref.pairs, ref.chosen_logps, ref.rejected_logps)]
    sharing = resolve_prefix_sharing(model, ref.pairs[:2], tok.pad_token_id, dcfg.prefix_sharing, say=say)
    torch.manual_seed(dcfg.seed)  # LoRA's initial weights: reproducible like everything else
    model = apply_lora(model, dcfg.lora)
    layout = pair_layout(model, sharing, dcfg.packing)
    result = train(
        model,
        items,
        DPOObjective(dcfg, layout.collator(tok.pad_token_id)),
        dcfg,
        checkpoint_dir=ctx.resume_dir,
        callbacks=[HistoryLogger(ctx.sink, "dpo")],
        desc="DPO",
        say=say,
        precision=config.dtype,
    )
    last = result.history[-max(1, len(result.history) // 10) :]  # the final tenth, less noisy than one step
    mean = lambda key: sum(h[key] for h in last) / len(last)  # noqa: E731
    metrics = {
        "final_loss": mean("loss"),
        "final_reward_accuracy": mean("rewards/accuracies"),
        "final_reward_margin": mean("rewards/margins"),
        "steps": float(result.steps),
        "seconds": result.seconds,
        "tokens_per_s": sum(h["tokens_per_s"] for h in result.history) / len(result.history),
        "peak_memory_mb": max(h["peak_memory_mb"] for h in result.history),
        "padding_fraction": sum(h["padding_fraction"] for h in result.history) / len(result.history),
        **layout.metrics(),  # prefix_sharing, packing, attention_{concatenated,dense,flex}
    }
    publish_training(ctx.out_dir, model, tok, result.history, metrics)
    tokens = ctx.inputs["reference"] / REFERENCE_FILE
    write_datasets(ctx.out_dir, [dataset_record("preference-pairs-tokenized", file_digest(tokens), str(tokens), len(items), "training", "stage")])
    return metrics


SPEC = StageSpec(
    name="dpo",
    upstream=("sft", "reference"),
    config=DPOSlice,
    run=run,
    artifacts=("history.jsonl", "metrics.json"),
    uses_gpu=True,
)
