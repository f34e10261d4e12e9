"""Reference log-probs: the SFT model tokenizes and scores every pair once, without gradients.

Stored with the pairs' token ids, so DPO trains on exactly these tokens and holds only the policy.
"""
from __future__ import annotations

import json
from typing import Annotated, Literal

from alignpipe.models import use_attention
from alignpipe.stages.artifacts import ReferencePairs, read_pairs, write_reference
from alignpipe.stages.base import StageContext, StageSpec
from alignpipe.stages.common import load_trainable
from alignpipe.tokenization import as_chat, tokenize_pairs
from alignpipe.train.precision import reference_pair_logps, resolve_reference_prefix_sharing
from pipeline_config.schema import ReferenceConfig
from pipeline_config.slices import From, StageConfig


class ReferenceSlice(StageConfig):
    reference: Annotated[ReferenceConfig, From("reference")]
    # The pairs are tokenized here, once, for DPO: with DPO's lengths and its attention layout.
    max_length: Annotated[int, From("dpo.max_length")]
    max_prompt_length: Annotated[int, From("dpo.max_prompt_length")]
    prefix_sharing: Annotated[Literal["auto", "on", "off"], From("dpo.prefix_sharing")]
    packing: Annotated[bool, From("dpo.packing")]
    attention: Annotated[Literal["sdpa", "flex_attention", "eager"], From("model.attention")]
    chat_template: Annotated[bool, From("model.chat_template")]
    dtype: Annotated[Literal["auto", "float32", "bfloat16"], From("model.dtype")]  # the training autocast


def run(ctx: StageContext) -> dict[str, float]:
    config: ReferenceSlice = ctx.config
    model, tok = load_trainable(ctx.inputs["sft"])  # fp32 weights: the policy's regime at step 0
    use_attention(model, config.attention)
    records = [{**r, "prompt": as_chat(r["prompt"], config.chat_template)} for r in read_pairs(ctx.inputs["pairs"])]
    pairs, stats = tokenize_pairs(tok, records, max_length=config.max_length, max_prompt_length=config.max_prompt_length)
    if not pairs:
        raise ValueError(f"reference: all {len(records)} pairs were dropped by truncation to dpo.max_length {config.max_length}")
    # decided once, here, in the training regime; stored with the log-probs for DPO to train in
    sharing = resolve_reference_prefix_sharing(
        model, pairs, tok.pad_token_id, config.prefix_sharing, precision=config.dtype, say=lambda line: ctx.say(f"reference: {line}")
    )
    chosen, rejected = reference_pair_logps(
        model, pairs, tok.pad_token_id, batch_size=config.reference.batch_size, precision=config.dtype,
        prefix_sharing=sharing, packing=config.packing, desc="reference log-probs",
    )  # fmt: skip
    dropped = set(stats.dropped_indices)
    kept = [i for i in range(len(records)) if i not in dropped]
    write_reference(ctx.out_dir, ReferencePairs(pairs, chosen, rejected, kept, sharing))
    metrics = {
        "pairs": float(len(pairs)),
        "chosen_logp_mean": float(chosen.mean()),
        "rejected_logp_mean": float(rejected.mean()),
        "prefix_sharing": float(sharing == "on"),
        **stats.as_metrics("data"),
    }
    (ctx.out_dir / "stats.json").write_text(json.dumps({**metrics, "dropped_indices": stats.dropped_indices}, indent=2))
    return metrics


SPEC = StageSpec(
    name="reference",
    upstream=("sft", "pairs"),
    config=ReferenceSlice,
    run=run,
    artifacts=("stats.json",),
    uses_gpu=True,
)
