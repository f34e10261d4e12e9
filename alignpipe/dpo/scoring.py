"""Summed completion log-probs of preference pairs: one forward per pair with a shared prompt.

`prefix_sharing` runs [prompt|chosen|rejected] as one row (rejected tokens masked from chosen ones,
positions restarting after the prompt), so the prompt is computed once instead of twice. Models
whose attention cannot take a 4-D mask fall back to the concatenated chosen+rejected batch.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Literal, Sequence

import torch
from tqdm.auto import tqdm

from alignpipe.batching import LogpBatch, collate_concatenated, collate_prefix_shared, length_sorted_batches
from alignpipe.logprobs import SequenceScorer, can_take_4d_mask
from alignpipe.tokenization import TokenizedPair, tokenize_pairs

log = logging.getLogger(__name__)

PrefixSharing = Literal["auto", "on", "off"]


def pair_collator(model, pad_id: int, prefix_sharing: PrefixSharing) -> Callable[[Sequence[TokenizedPair]], LogpBatch]:
    """The collate function for this model: prefix-shared when it can take the mask."""
    if prefix_sharing == "on" and not can_take_4d_mask(model):
        raise ValueError("dpo.prefix_sharing: 'on' needs sdpa or eager attention; use 'auto' or 'off'")
    if prefix_sharing == "off" or not can_take_4d_mask(model):
        return lambda pairs: collate_concatenated(pairs, pad_id)
    return lambda pairs: collate_prefix_shared(pairs, pad_id)


@torch.no_grad()
def prefix_sharing_agrees(model, pairs: Sequence[TokenizedPair], pad_id: int, rtol: float = 1e-3) -> bool:
    """Checks on real pairs that the shared-prefix forward matches separate forwards (a model-level guard)."""
    scorer = SequenceScorer(model)
    device = next(model.parameters()).device
    shared = scorer(collate_prefix_shared(pairs, pad_id).to(device))
    separate = scorer(collate_concatenated(pairs, pad_id).to(device))
    return bool(torch.allclose(shared, separate, rtol=rtol, atol=rtol * 10))


def resolve_prefix_sharing(model, pairs: Sequence[TokenizedPair], pad_id: int, mode: PrefixSharing) -> PrefixSharing:
    """'auto' becomes 'on' only when the model takes the mask and the check agrees on a few pairs."""
    if mode != "auto":
        return mode
    if not can_take_4d_mask(model):
        log.info("prefix sharing off: attention implementation cannot take a 4-D mask")
        return "off"
    if not prefix_sharing_agrees(model, pairs[:2], pad_id):
        log.warning("prefix sharing off: shared-prefix log-probs disagree with separate forwards for this model")
        return "off"
    return "on"


@torch.no_grad()
def tokenized_pair_logps(
    model,
    pairs: Sequence[TokenizedPair],
    pad_id: int,
    *,
    batch_size: int,
    prefix_sharing: PrefixSharing = "auto",
    desc: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) summed log-probs for already tokenized pairs, in their order."""
    was_training = model.training
    model.eval()
    mode = resolve_prefix_sharing(model, pairs, pad_id, prefix_sharing)
    collate = pair_collator(model, pad_id, mode)
    scorer = SequenceScorer(model)
    device = next(model.parameters()).device
    chosen = torch.empty(len(pairs), dtype=torch.float32)
    rejected = torch.empty(len(pairs), dtype=torch.float32)
    batches = length_sorted_batches([len(p) for p in pairs], batch_size)
    for idx in tqdm(batches, desc=desc or "log-probs", disable=desc is None, unit="batch"):
        logps = scorer(collate([pairs[i] for i in idx]).to(device)).float().cpu()
        chosen[idx], rejected[idx] = logps[: len(idx)], logps[len(idx) :]
    model.train(was_training)
    return chosen, rejected


def pair_logps(
    model,
    tokenizer,
    pairs: Sequence[dict[str, Any]],
    *,
    max_length: int,
    max_prompt_length: int,
    batch_size: int,
    prefix_sharing: PrefixSharing = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of each pair's chosen and rejected completion (NaN for pairs dropped by truncation)."""
    tokenized, stats = tokenize_pairs(tokenizer, pairs, max_length=max_length, max_prompt_length=max_prompt_length)
    c, r = tokenized_pair_logps(model, tokenized, tokenizer.pad_token_id, batch_size=batch_size, prefix_sharing=prefix_sharing)
    dropped = set(stats.dropped_indices)
    kept = [i for i in range(len(pairs)) if i not in dropped]
    chosen = torch.full((len(pairs),), float("nan"))
    rejected = torch.full((len(pairs),), float("nan"))
    chosen[kept], rejected[kept] = c, r
    return chosen, rejected
