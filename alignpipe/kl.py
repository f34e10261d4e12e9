"""Sequence-level KL(policy || reference) on the policy's own samples, as in the paper's frontier:
the sum over completion positions of the full-vocabulary KL between the two next-token distributions."""
from __future__ import annotations

from typing import Sequence

import torch

from alignpipe.batching import collate_examples, length_sorted_batches
from alignpipe.logprobs import DEFAULT_CHUNK_ELEMENTS, gathered_hidden
from alignpipe.tokenization import as_chat, tokenize_examples


@torch.no_grad()
def sequence_kl(
    policy, reference, tokenizer, prompts: Sequence[str], completions: Sequence[str], *, batch_size: int = 8,
    max_length: int = 1024, chat_template: bool = False,
) -> list[float]:
    """One KL per (prompt, completion); positions include the end-of-sequence step. With chat_template
    the prompt is scored as the user turn the samples were generated from."""
    records = [{"prompt": as_chat(p, chat_template), "completion": c if c.strip() else tokenizer.eos_token} for p, c in zip(prompts, completions)]
    examples, stats = tokenize_examples(tokenizer, records, max_length=max_length, max_prompt_length=max_length // 2)
    if stats.dropped:
        raise ValueError(f"KL: {stats.dropped} samples left no completion tokens after truncation")
    device = next(policy.parameters()).device
    out = [0.0] * len(examples)
    for idx in length_sorted_batches([len(e) for e in examples], batch_size):
        batch = collate_examples([examples[i] for i in idx], tokenizer.pad_token_id).to(device)
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
