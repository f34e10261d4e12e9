"""Summed completion log-probs of preference pairs, in the layout the model's attention allows.

`prefix_sharing` runs [prompt|chosen|rejected] as one sequence (rejected tokens masked from chosen
ones, positions restarting after the prompt), so the prompt is computed once instead of twice.
`packing` puts several sequences in a row, each with its own positions and none seeing another, so
rows are not padded to the longest pair. Both need an attention that takes a custom mask (sdpa,
eager, flex_attention; alignpipe.attention). A layout that cannot apply to the model is an error
in one line ('on', packing) or, for prefix_sharing 'auto', a fallback said in one line.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

import torch
from tqdm.auto import tqdm

from alignpipe.attention import LAYOUT_ATTENTION, attention_implementation, attention_path, layout_refusal, packing_for, takes_layout_mask
from alignpipe.batching import LogpBatch, Packing, collate_pairs, length_sorted_batches
from alignpipe.logprobs import SequenceScorer
from alignpipe.tokenization import TokenizedPair, tokenize_pairs

log = logging.getLogger(__name__)

PrefixSharing = Literal["auto", "on", "off"]


@dataclass(frozen=True)
class PairLayout:
    """How pairs are laid out for one model: what the stage metrics record."""

    prefix_sharing: bool
    packing: Packing
    attention: str  # concatenated | dense | flex (alignpipe.attention.attention_path)

    def collator(self, pad_id: int) -> Callable[[Sequence[TokenizedPair]], LogpBatch]:
        return lambda pairs: collate_pairs(pairs, pad_id, prefix_sharing=self.prefix_sharing, packing=self.packing)

    def metrics(self) -> dict[str, float]:
        return {
            "prefix_sharing": float(self.prefix_sharing),
            "packing": float(self.packing != "off"),
            **{f"attention_{path}": float(self.attention == path) for path in ("concatenated", "dense", "flex")},
        }


def pair_layout(model, prefix_sharing: PrefixSharing, packing: bool = False) -> PairLayout:
    """The layout for this model; 'auto' here means 'on' when the attention takes the mask (see
    resolve_prefix_sharing for the check on real pairs)."""
    if prefix_sharing == "on" and attention_implementation(model) in LAYOUT_ATTENTION and not takes_layout_mask(model):
        raise ValueError(f"dpo.prefix_sharing: 'on' is wrong for this model: {layout_refusal(model)} (use 'auto' or 'off')")
    if prefix_sharing == "on" and not takes_layout_mask(model):
        raise ValueError(
            f"dpo.prefix_sharing: 'on' needs attention {', '.join(LAYOUT_ATTENTION)}; this model uses "
            f"'{attention_implementation(model)}' (use 'auto' or 'off')"
        )
    shared = prefix_sharing != "off" and takes_layout_mask(model)
    mode = packing_for(model, packing, "dpo.packing")
    return PairLayout(shared, mode, attention_path(model, layout=shared or mode != "off"))


def pair_collator(model, pad_id: int, prefix_sharing: PrefixSharing, packing: bool = False) -> Callable[[Sequence[TokenizedPair]], LogpBatch]:
    """The collate function for this model (see pair_layout)."""
    return pair_layout(model, prefix_sharing, packing).collator(pad_id)


AGREEMENT_PAIRS = 8  # the longest pairs: where a position or window error would show


@torch.no_grad()
def prefix_sharing_agrees(model, pairs: Sequence[TokenizedPair], pad_id: int) -> bool:
    """Checks on real pairs (the longest few) that the shared-prefix forward matches separate forwards,
    a model-level guard behind alignpipe.attention's rule: within 1e-4 of the summed log-prob in fp32,
    within bf16 rounding (1e-2 + 1e-3 relative) under autocast."""
    scorer = SequenceScorer(model)
    device = next(model.parameters()).device
    longest = sorted(pairs, key=len, reverse=True)[:AGREEMENT_PAIRS]
    shared = scorer(collate_pairs(longest, pad_id, prefix_sharing=True).to(device))
    separate = scorer(collate_pairs(longest, pad_id, prefix_sharing=False).to(device))
    rtol, atol = (1e-3, 1e-2) if torch.is_autocast_enabled(device.type) else (1e-5, 1e-4)
    return bool(torch.allclose(shared, separate, rtol=rtol, atol=atol))


def resolve_prefix_sharing(
    model, pairs: Sequence[TokenizedPair], pad_id: int, mode: PrefixSharing, say: Callable[[str], None] = log.info
) -> PrefixSharing:
    """'auto' becomes 'on' only when the model takes the mask and the check agrees on the longest
    pairs; when it becomes 'off', `say` gets the one line that says why. The pipeline decides once,
    in the reference stage (alignpipe.train.precision.resolve_reference_prefix_sharing)."""
    if mode != "auto":
        return mode
    if not takes_layout_mask(model):
        say(f"prefix sharing off: {layout_refusal(model)}")
        return "off"
    if not prefix_sharing_agrees(model, pairs, pad_id):
        say("prefix sharing off: shared-prefix log-probs disagree with separate forwards for this model")
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
    packing: bool = False,
    desc: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) summed log-probs for already tokenized pairs, in their order."""
    was_training = model.training
    model.eval()
    mode = resolve_prefix_sharing(model, pairs, pad_id, prefix_sharing)
    collate = pair_collator(model, pad_id, mode, packing)
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
    packing: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of each pair's chosen and rejected completion (NaN for pairs dropped by truncation)."""
    tokenized, stats = tokenize_pairs(tokenizer, pairs, max_length=max_length, max_prompt_length=max_prompt_length)
    c, r = tokenized_pair_logps(
        model, tokenized, tokenizer.pad_token_id, batch_size=batch_size, prefix_sharing=prefix_sharing, packing=packing
    )
    dropped = set(stats.dropped_indices)
    kept = [i for i in range(len(pairs)) if i not in dropped]
    chosen = torch.full((len(pairs),), float("nan"))
    rejected = torch.full((len(pairs),), float("nan"))
    chosen[kept], rejected[kept] = c, r
    return chosen, rejected
