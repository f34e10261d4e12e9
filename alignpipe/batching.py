"""Collation into padded tensors plus the index lists that say which hidden state predicts which token.

Every batch, SFT or DPO, shared-prefix or not, ends up in one form (`LogpBatch`): run the backbone,
gather hidden states at `gather_index`, score `targets`, sum per `segment`. One code path scores all.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from alignpipe.tokenization import TokenizedExample, TokenizedPair


@dataclass
class LogpBatch:
    input_ids: torch.Tensor  # [rows, L]
    attention_mask: torch.Tensor  # [rows, L] (0/1) or [rows, 1, L, L] boolean
    position_ids: Optional[torch.Tensor]  # [rows, L] or None
    gather_index: torch.Tensor  # [N] flat indices into rows*L of the predicting hidden states
    targets: torch.Tensor  # [N] token ids being scored
    segment: torch.Tensor  # [N] which sequence each target belongs to
    num_segments: int
    real_tokens: int  # tokens fed to the model, padding excluded
    padded_tokens: int  # rows * L

    def to(self, device) -> "LogpBatch":
        move = lambda t: t.to(device) if isinstance(t, torch.Tensor) else t  # noqa: E731
        return LogpBatch(**{k: move(v) for k, v in vars(self).items()})

    @property
    def padding_fraction(self) -> float:
        return 1.0 - self.real_tokens / max(1, self.padded_tokens)

    def segment_token_counts(self) -> torch.Tensor:
        return torch.bincount(self.segment, minlength=self.num_segments)


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (less padding), longest first so memory peaks early."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


def _pad(rows: Sequence[list[int]], pad_id: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def _completion_targets(row: int, width: int, start: int, completion: list[int], first_pred: int):
    """Indices predicting each completion token: `first_pred` predicts token 0, then the token before."""
    idx = [first_pred] + list(range(start, start + len(completion) - 1))
    return [row * width + i for i in idx], completion


def _padded_rows_batch(ids, mask, gather, targets, segment, num_segments: int) -> LogpBatch:
    """A batch of independent right-padded rows with an ordinary 2-D padding mask."""
    return LogpBatch(
        input_ids=ids,
        attention_mask=mask,
        position_ids=None,
        gather_index=torch.tensor(gather),
        targets=torch.tensor(targets),
        segment=torch.tensor(segment),
        num_segments=num_segments,
        real_tokens=int(mask.sum()),
        padded_tokens=ids.numel(),
    )


def collate_concatenated(pairs: Sequence[TokenizedPair], pad_id: int) -> LogpBatch:
    """2B rows: [prompt|chosen] for each pair, then [prompt|rejected]. Works with any causal LM."""
    rows = [p.prompt + p.chosen for p in pairs] + [p.prompt + p.rejected for p in pairs]
    ids = _pad(rows, pad_id)
    width = ids.shape[1]
    mask = torch.zeros_like(ids)
    gather, targets, segment = [], [], []
    b = len(pairs)
    for i, p in enumerate(pairs):
        for row, comp in ((i, p.chosen), (b + i, p.rejected)):
            mask[row, : len(p.prompt) + len(comp)] = 1
            g, t = _completion_targets(row, width, len(p.prompt), comp, len(p.prompt) - 1)
            gather += g
            targets += t
            segment += [row] * len(t)
    return _padded_rows_batch(ids, mask, gather, targets, segment, 2 * b)


def prefix_shared_mask(prompt_len: torch.Tensor, chosen_len: torch.Tensor, total_len: torch.Tensor, width: int) -> torch.Tensor:
    """Boolean [B, 1, L, L] mask (True = may attend) for rows [prompt|chosen|rejected]: causal, except
    rejected tokens cannot see chosen tokens; padding attends only to itself (no empty softmax row)."""
    pos = torch.arange(width)
    q, k = pos[None, :, None], pos[None, None, :]
    p, c, t = prompt_len[:, None, None], chosen_len[:, None, None], total_len[:, None, None]
    rejected_q = (q >= p + c) & (q < t)
    chosen_k = (k >= p) & (k < p + c)
    allowed = (k <= q) & ~(rejected_q & chosen_k) & (q < t) & (k < t)
    allowed |= q == k
    return allowed[:, None]


def collate_prefix_shared(pairs: Sequence[TokenizedPair], pad_id: int) -> LogpBatch:
    """B rows: [prompt|chosen|rejected], the prompt computed once; rejected positions restart after the prompt."""
    ids = _pad([p.prompt + p.chosen + p.rejected for p in pairs], pad_id)
    b, width = ids.shape
    positions = torch.zeros_like(ids)
    gather, targets, segment = [], [], []
    for i, p in enumerate(pairs):
        lp, lc, lr = len(p.prompt), len(p.chosen), len(p.rejected)
        positions[i, : lp + lc] = torch.arange(lp + lc)
        positions[i, lp + lc : lp + lc + lr] = torch.arange(lp, lp + lr)
        g, t = _completion_targets(i, width, lp, p.chosen, lp - 1)
        gather += g
        targets += t
        segment += [i] * len(t)
        g, t = _completion_targets(i, width, lp + lc, p.rejected, lp - 1)
        gather += g
        targets += t
        segment += [b + i] * len(t)
    lens = torch.tensor([[len(p.prompt), len(p.chosen), len(p)] for p in pairs])
    return LogpBatch(
        input_ids=ids,
        attention_mask=prefix_shared_mask(lens[:, 0], lens[:, 1], lens[:, 2], width),
        position_ids=positions,
        gather_index=torch.tensor(gather),
        targets=torch.tensor(targets),
        segment=torch.tensor(segment),
        num_segments=2 * b,
        real_tokens=int(lens[:, 2].sum()),
        padded_tokens=ids.numel(),
    )


def collate_examples(examples: Sequence[TokenizedExample], pad_id: int) -> LogpBatch:
    """SFT rows [prompt|completion]; one segment per example."""
    ids = _pad([e.prompt + e.completion for e in examples], pad_id)
    width = ids.shape[1]
    mask = torch.zeros_like(ids)
    gather, targets, segment = [], [], []
    for i, e in enumerate(examples):
        mask[i, : len(e)] = 1
        g, t = _completion_targets(i, width, len(e.prompt), e.completion, len(e.prompt) - 1)
        gather += g
        targets += t
        segment += [i] * len(t)
    return _padded_rows_batch(ids, mask, gather, targets, segment, len(examples))
