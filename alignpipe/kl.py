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
"""
from __future__ import annotations

from typing import Sequence

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


@torch.no_grad()
def sampled_sequence_kl(
    policy, reference, prompt_ids: Sequence[list[int]], token_ids: Sequence[list[int]], *, pad_id: int, batch_size: int = 8,
    packing: Packing | None = None,
) -> list[float]:
    """One KL (nats) per sampled sequence: sum over its sampled positions of the full-vocabulary
    KL between the policy's and the reference's next-token distributions. `packing` None: packed
    where the models allow it (scoring_packing)."""
    if len(prompt_ids) != len(token_ids):
        raise ValueError(f"KL: {len(prompt_ids)} prompts but {len(token_ids)} samples")
    for i, (p, t) in enumerate(zip(prompt_ids, token_ids)):
        if not p or not t:
            raise ValueError(f"KL: sample {i} has an empty {'prompt' if not p else 'completion'} (nothing to score)")
    packing = scoring_packing(policy, reference) if packing is None else packing
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
            lp = torch.log_softmax((hp[s : s + chunk] @ head_p.weight.T).float(), -1)
            lr = torch.log_softmax((hr[s : s + chunk] @ head_r.weight.T).float(), -1)
            per_token[s : s + chunk] = (lp.exp() * (lp - lr)).sum(-1)
        sums = torch.zeros(batch.num_segments, device=device).index_add(0, batch.segment, per_token)
        for j, i in enumerate(idx):
            out[i] = float(sums[j])
    return out
