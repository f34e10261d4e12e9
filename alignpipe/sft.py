"""Supervised fine-tuning: completion-only negative log-likelihood, through the shared training loop."""
from __future__ import annotations

import math
from typing import Sequence

import torch

from alignpipe.attention import packing_for
from alignpipe.batching import Packing, collate_examples, length_sorted_batches
from alignpipe.logprobs import SequenceScorer
from alignpipe.tokenization import TokenizedExample


class SFTObjective:
    """Loss = summed NLL of completion tokens (EOS included); the loop divides by the token count.
    `packing` (alignpipe.attention.packing_for) puts several examples in a row."""

    def __init__(self, pad_id: int, packing: Packing = "off"):
        self.pad_id = pad_id
        self.packing = packing

    def units(self, item: TokenizedExample) -> float:
        return float(len(item.completion))

    def collate(self, items: Sequence[TokenizedExample]):
        return collate_examples(items, self.pad_id, self.packing)

    def __call__(self, scorer, batch, items) -> tuple[torch.Tensor, dict[str, float]]:
        return -scorer(batch).sum(), {}


@torch.no_grad()
def evaluate_nll(
    model, examples: Sequence[TokenizedExample], pad_id: int, batch_size: int = 16, packing: bool = False
) -> dict[str, float]:
    """Mean per-token NLL of the completions and its perplexity."""
    if not examples:
        return {}
    was_training = model.training
    model.eval()
    scorer = SequenceScorer(model)
    device = next(model.parameters()).device
    mode = packing_for(model, packing, "sft.packing")
    nll, tokens = 0.0, 0
    for idx in length_sorted_batches([len(e) for e in examples], batch_size):
        batch = collate_examples([examples[i] for i in idx], pad_id, mode).to(device)
        nll -= float(scorer(batch).sum())
        tokens += len(batch.targets)
    model.train(was_training)
    loss = nll / tokens
    return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0))}
