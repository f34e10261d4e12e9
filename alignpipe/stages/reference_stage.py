"""Reference log-probs: the SFT model scores every pair once, without gradients, in large batches.

Stored beside the pairs so DPO training holds only the policy in memory.
"""
from __future__ import annotations

import json

import torch
from safetensors.torch import load_file, save_file

from alignpipe.stages.base import StageContext, StageSpec
from alignpipe.stages.common import load_trainable
from alignpipe.stages.pairs_stage import read_pairs
from alignpipe.tokenization import TokenizedPair, tokenize_pairs
from alignpipe.train.precision import reference_pair_logps

LOGPS_FILE = "reference_logps.safetensors"


def config_slice(cfg) -> dict:
    d = cfg.dpo
    return {
        "max_length": d.max_length,
        "max_prompt_length": d.max_prompt_length,
        "batch_size": cfg.reference.batch_size,
        "chat_template": cfg.model.chat_template,
    }


def as_chat(records: list[dict], chat: bool) -> list[dict]:
    """With model.chat_template the prompt becomes a user turn, rendered by the tokenizer's template."""
    if not chat:
        return records
    return [{**r, "prompt": [{"role": "user", "content": r["prompt"]}]} for r in records]


def tokenized_pairs(ctx: StageContext, tokenizer) -> tuple[list[TokenizedPair], object]:
    d = ctx.cfg.dpo
    records = as_chat(read_pairs(ctx.inputs["pairs"]), ctx.cfg.model.chat_template)
    return tokenize_pairs(tokenizer, records, max_length=d.max_length, max_prompt_length=d.max_prompt_length)


def run(ctx: StageContext) -> dict[str, float]:
    model, tok = load_trainable(ctx.inputs["sft"])
    pairs, stats = tokenized_pairs(ctx, tok)
    chosen, rejected = reference_pair_logps(model, pairs, tok.pad_token_id, batch_size=ctx.cfg.reference.batch_size, desc="reference log-probs")
    save_file({"chosen": chosen.contiguous(), "rejected": rejected.contiguous()}, str(ctx.out_dir / LOGPS_FILE))
    metrics = {
        "pairs": float(len(pairs)),
        "chosen_logp_mean": float(chosen.mean()),
        "rejected_logp_mean": float(rejected.mean()),
        **stats.as_metrics("data"),
    }
    (ctx.out_dir / "stats.json").write_text(json.dumps({**metrics, "dropped_indices": stats.dropped_indices}, indent=2))
    return metrics


def load_reference(stage_dir) -> tuple[torch.Tensor, torch.Tensor]:
    t = load_file(str(stage_dir / LOGPS_FILE))
    return t["chosen"], t["rejected"]


SPEC = StageSpec(
    name="reference",
    upstream=("sft", "pairs"),
    version="2",  # 2: fp32 weights under the training autocast (was model.dtype), as the policy at step 0
    config_slice=config_slice,
    run=run,
    artifacts=("stats.json",),
    uses_gpu=True,
)
