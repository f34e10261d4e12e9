"""DPO training of the SFT model on the pairs, against the stored reference log-probs."""
from __future__ import annotations

import torch

from alignpipe.dpo.objective import DPOObjective, PreferenceItem
from alignpipe.dpo.scoring import pair_collator, resolve_prefix_sharing
from alignpipe.stages.base import StageContext, StageSpec
from alignpipe.stages.common import HistoryLogger, apply_lora, load_trainable, publish_training
from alignpipe.stages.reference_stage import load_reference, tokenized_pairs
from alignpipe.train.loop import train


def config_slice(cfg) -> dict:
    return {"dpo": cfg.dpo.model_dump(), "chat_template": cfg.model.chat_template}


def run(ctx: StageContext) -> dict[str, float]:
    dcfg = ctx.cfg.dpo
    model, tok = load_trainable(ctx.inputs["sft"])
    pairs, _ = tokenized_pairs(ctx, tok)
    ref_chosen, ref_rejected = load_reference(ctx.inputs["reference"])
    if len(ref_chosen) != len(pairs):
        raise ValueError(f"reference: {len(ref_chosen)} log-probs for {len(pairs)} pairs; rerun the reference stage")
    items = [PreferenceItem(p, float(c), float(r)) for p, c, r in zip(pairs, ref_chosen, ref_rejected)]
    sharing = resolve_prefix_sharing(model, pairs[:2], tok.pad_token_id, dcfg.prefix_sharing)
    torch.manual_seed(dcfg.seed)  # LoRA's initial weights: reproducible like everything else
    model = apply_lora(model, dcfg.lora)
    result = train(
        model,
        items,
        DPOObjective(dcfg, pair_collator(model, tok.pad_token_id, sharing)),
        dcfg,
        checkpoint_dir=ctx.resume_dir,
        callbacks=[HistoryLogger(ctx.sink, "dpo")],
        desc="DPO",
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
        "prefix_sharing": float(sharing == "on"),
    }
    publish_training(ctx.out_dir, model, tok, result.history, metrics)
    return metrics


SPEC = StageSpec(
    name="dpo",
    upstream=("sft", "pairs", "reference"),
    version="1",
    config_slice=config_slice,
    run=run,
    artifacts=("history.jsonl", "metrics.json"),
    uses_gpu=True,
)
