"""Sequence-level KL(policy || reference) of sequences the policy itself sampled, as in the paper's frontier.

For y ~ pi(.|x), KL(pi(.|x) || ref(.|x)) = E_y[ sum_t KL(pi(.|x, y<t) || ref(.|x, y<t)) ]: the exact
per-token KL (over the whole vocabulary) summed along the sampled sequence is an unbiased, low-variance
per-sample estimate, *provided y was drawn from pi itself*: temperature 1, no nucleus truncation. At any
other temperature the samples come from a different distribution and the sum is not a KL of the policy,
so callers score only T=1 samples (alignpipe.evaluation does).

The sequence is scored exactly as it was sampled: the prompt ids the model was conditioned on and the
token ids it drew (alignpipe.generate keeps both), never a re-tokenization of the decoded text. A sample
that stopped at EOS includes the EOS step (the policy chose to stop there); a sample cut at
max_new_tokens has no EOS step, because none was sampled: its KL is that of the length-capped sequence.

Precision: the scoring runs in fp32 whatever the training dtype (`model.dtype`): any enclosing autocast
is switched off, and weights held in a lower precision are cast up to fp32 for the call (and back,
exactly, afterwards). A KL of a few hundredths of a nat per sequence is below what a bf16 forward can
resolve (SmolLM2-135M, 24 tokens: 0.0029 in fp32, 0.0447 in bf16, 0.0295 with only the head in fp32).
Weights already rounded to bf16 stay rounded, so the evaluate stage hands over the fp32 weights
training saved (alignpipe/stages/evaluate_stage.py).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch

from alignpipe.attention import packing_for, takes_layout_mask
from alignpipe.batching import Packing, collate_examples, length_sorted_batches
from alignpipe.logprobs import DEFAULT_CHUNK_ELEMENTS, gathered_hidden
from alignpipe.tokenization import TokenizedExample


def collate_sampled(prompt_ids: Sequence[list[int]], token_ids: Sequence[list[int]], pad_id: int, packing: Packing = "off"):
    """[prompt | sampled tokens] sequences whose targets are exactly the sampled tokens (one segment
    each), packed side by side in rows when `packing` is not "off" (same targets, less padding)."""
    return collate_examples([TokenizedExample(list(p), list(t)) for p, t in zip(prompt_ids, token_ids)], pad_id, packing)


def scoring_packing(policy, reference) -> Packing:
    """Scoring packs whenever both models' attention takes a layout mask (sdpa, eager, flex): the
    values are those of the unpacked rows (tests/test_packing.py), only the padding goes."""
    return packing_for(policy, True) if takes_layout_mask(policy) and takes_layout_mask(reference) else "off"


SCORING_DTYPE = torch.float32


@contextmanager
def fp32_scoring(*models) -> Iterator[None]:
    """Every floating weight and buffer of `models` in fp32 at least (fp64 stays) and no autocast, for
    the duration; tensors cast up are put back in their dtype afterwards (bf16 -> fp32 -> bf16 is exact)."""
    restore, seen = [], set()
    for model in models:
        for tensor in (*model.parameters(), *model.buffers()):
            if id(tensor) in seen or not tensor.is_floating_point() or torch.finfo(tensor.dtype).bits >= 32:
                continue
            seen.add(id(tensor))
            restore.append((tensor, tensor.dtype))
            tensor.data = tensor.data.to(SCORING_DTYPE)
    device_type = next(models[0].parameters()).device.type
    try:
        with torch.autocast(device_type, enabled=False):
            yield
    finally:
        for tensor, dtype in restore:
            tensor.data = tensor.data.to(dtype)


@torch.no_grad()
def sampled_sequence_kl(
    policy, reference, prompt_ids: Sequence[list[int]], token_ids: Sequence[list[int]], *, pad_id: int, batch_size: int = 8,
    packing: Packing | None = None,
) -> list[float]:
    """One KL (nats) per sampled sequence: sum over its sampled positions of the full-vocabulary
    KL between the policy's and the reference's next-token distributions, computed in fp32 whatever
    the models' dtype or an enclosing autocast (fp32_scoring). `packing` None: packed where the
    models allow it (scoring_packing)."""
    if len(prompt_ids) != len(token_ids):
        raise ValueError(f"KL: {len(prompt_ids)} prompts but {len(token_ids)} samples")
    for i, (p, t) in enumerate(zip(prompt_ids, token_ids)):
        if not p or not t:
            raise ValueError(f"KL: sample {i} has an empty {'prompt' if not p else 'completion'} (nothing to score)")
    packing = scoring_packing(policy, reference) if packing is None else packing
    with fp32_scoring(policy, reference):
        return _sequence_kl(policy, reference, prompt_ids, token_ids, pad_id, batch_size, packing)


def _sequence_kl(policy, reference, prompt_ids, token_ids, pad_id: int, batch_size: int, packing: Packing) -> list[float]:
    device = next(policy.parameters()).device
    out = [0.0] * len(token_ids)
    lengths = [len(p) + len(t) for p, t in zip(prompt_ids, token_ids)]
    for idx in length_sorted_batches(lengths, batch_size):
        batch = collate_sampled([prompt_ids[i] for i in idx], [token_ids[i] for i in idx], pad_id, packing).to(device)
        hp, head_p = gathered_hidden(policy, batch)
        hr, head_r = gathered_hidden(reference, batch)
        chunk = max(1, DEFAULT_CHUNK_ELEMENTS // head_p.weight.shape[0])
        per_token = torch.empty(hp.shape[0], dtype=torch.float32, device=device)
        for s in range(0, hp.shape[0], chunk):
            lp = torch.log_softmax(hp[s : s + chunk] @ head_p.weight.T, -1)
            lr = torch.log_softmax(hr[s : s + chunk] @ head_r.weight.T, -1)
            per_token[s : s + chunk] = (lp.exp() * (lp - lr)).sum(-1)
        sums = torch.zeros(batch.num_segments, device=device).index_add(0, batch.segment, per_token)
        for j, i in enumerate(idx):
            out[i] = float(sums[j])
    return out
