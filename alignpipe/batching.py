"""Collation into padded tensors plus the index lists that say which hidden state predicts which token.

Every batch, SFT or DPO, prefix-shared, packed or not, ends up in one form (`LogpBatch`): run the
backbone, gather hidden states at `gather_index`, score `targets`, sum per `segment`. One code path
scores all.

A row holds one or more sequences. A plain sequence is [prompt|completion]; a prefix-shared pair is
one sequence [prompt|chosen|rejected] whose rejected branch cannot see the chosen one and whose
positions restart after the prompt. Packing puts several sequences side by side in a row, each with
its own positions, none seeing another. Where a row is more than one causal sequence, the batch
carries `sequence_ids` and `branch_ids`, and alignpipe.attention turns them into the mask the
model's attention takes (dense for sdpa and eager, a block mask for FlexAttention).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Sequence

import torch

from alignpipe.tokenization import TokenizedExample, TokenizedPair

SHARED, CHOSEN, REJECTED = 0, 1, 2  # branch_ids: a rejected token may not attend to a chosen one

# off: one sequence per row. to_longest: first-fit into rows no wider than the longest sequence (a
# dense mask costs width squared per row, so rows never get wider than unpacked). one_row: every
# sequence in one row (block-sparse attention skips what no query sees: no padding at all).
Packing = Literal["off", "to_longest", "one_row"]


@dataclass
class LogpBatch:
    input_ids: torch.Tensor  # [rows, L]
    attention_mask: torch.Tensor  # [rows, L] 0/1: real tokens (the model's mask when there is no layout)
    position_ids: Optional[torch.Tensor]  # [rows, L], or None: 0.. along each row
    gather_index: torch.Tensor  # [N] flat indices into rows*L of the predicting hidden states
    targets: torch.Tensor  # [N] token ids being scored
    segment: torch.Tensor  # [N] which scored sequence (completion) each target belongs to
    num_segments: int
    real_tokens: int  # tokens fed to the model, padding excluded
    padded_tokens: int  # rows * L
    # The layout, when a row is not one causal sequence (prefix sharing, packing); else None.
    sequence_ids: Optional[torch.Tensor] = None  # [rows, L]: index of the token's sequence in its row, -1 padding
    branch_ids: Optional[torch.Tensor] = None  # [rows, L]: SHARED, CHOSEN or REJECTED

    def to(self, device) -> "LogpBatch":
        move = lambda t: t.to(device) if isinstance(t, torch.Tensor) else t  # noqa: E731
        return LogpBatch(**{k: move(v) for k, v in vars(self).items()})

    @property
    def has_layout(self) -> bool:
        return self.sequence_ids is not None

    @property
    def padding_fraction(self) -> float:
        return 1.0 - self.real_tokens / max(1, self.padded_tokens)

    def segment_token_counts(self) -> torch.Tensor:
        return torch.bincount(self.segment, minlength=self.num_segments)


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (less padding), longest first so memory peaks early."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


@dataclass(frozen=True)
class _Sequence:
    """One sequence to place in a row: its tokens, their positions and branches, and what it scores
    (`predictors[j]`, an offset into the sequence, is the hidden state that predicts `targets[j]`)."""

    tokens: list[int]
    positions: list[int]
    branches: list[int]
    predictors: list[int]
    targets: list[int]
    segments: list[int]

    def __len__(self) -> int:
        return len(self.tokens)


def _plain(prompt: list[int], completion: list[int], segment: int) -> _Sequence:
    """[prompt|completion], scoring the completion; the last prompt token predicts its first token."""
    if not prompt:
        raise ValueError("a scored sequence needs at least one prompt token to predict its first token")
    n, lp = len(prompt) + len(completion), len(prompt)
    return _Sequence(
        prompt + completion, list(range(n)), [SHARED] * n,
        [lp - 1 + j for j in range(len(completion))], list(completion), [segment] * len(completion),
    )  # fmt: skip


def _prefix_shared(pair: TokenizedPair, chosen_segment: int, rejected_segment: int) -> _Sequence:
    """[prompt|chosen|rejected]: rejected positions restart after the prompt and its first token is
    predicted by the last prompt token, so each branch is scored as if it followed the prompt alone."""
    if not pair.prompt:
        raise ValueError("a scored sequence needs at least one prompt token to predict its first token")
    lp, lc, lr = len(pair.prompt), len(pair.chosen), len(pair.rejected)
    return _Sequence(
        pair.prompt + pair.chosen + pair.rejected,
        list(range(lp + lc)) + list(range(lp, lp + lr)),
        [SHARED] * lp + [CHOSEN] * lc + [REJECTED] * lr,
        [lp - 1 + j for j in range(lc)] + [lp - 1] + [lp + lc + j for j in range(lr - 1)],
        list(pair.chosen) + list(pair.rejected),
        [chosen_segment] * lc + [rejected_segment] * lr,
    )


def pack_rows(lengths: Sequence[int], packing: Packing) -> list[list[int]]:
    """Which sequences share a row: first-fit decreasing into rows of the packing's capacity."""
    if packing == "off":
        return [[i] for i in range(len(lengths))]
    if packing == "one_row":
        return [list(range(len(lengths)))]
    capacity = max(lengths)
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        row = next((r for r, space in enumerate(free) if space >= lengths[i]), None)
        if row is None:
            rows.append([])
            free.append(capacity)
            row = len(rows) - 1
        rows[row].append(i)
        free[row] -= lengths[i]
    return rows


def _collate(sequences: Sequence[_Sequence], pad_id: int, num_segments: int, packing: Packing) -> LogpBatch:
    """Place the sequences in rows and build the batch. Targets come in the order of `sequences`,
    whatever the packing. The layout is kept only when a row holds more than one causal sequence
    (otherwise any attention takes the 2-D padding mask)."""
    rows = pack_rows([len(s) for s in sequences], packing)
    width = max(sum(len(sequences[i]) for i in row) for row in rows)
    ids = [[pad_id] * width for _ in rows]
    mask = [[0] * width for _ in rows]
    positions = [[0] * width for _ in rows]
    seq_ids = [[-1] * width for _ in rows]
    branches = [[SHARED] * width for _ in rows]
    offset = [0] * len(sequences)  # where each sequence starts in the flattened rows*width tokens
    for r, row in enumerate(rows):
        start = 0
        for k, i in enumerate(row):
            s = sequences[i]
            end = start + len(s)
            ids[r][start:end] = s.tokens
            mask[r][start:end] = [1] * len(s)
            positions[r][start:end] = s.positions
            seq_ids[r][start:end] = [k] * len(s)
            branches[r][start:end] = s.branches
            offset[i] = r * width + start
            start = end
    gather = [offset[i] + p for i, s in enumerate(sequences) for p in s.predictors]
    targets = [t for s in sequences for t in s.targets]
    segment = [g for s in sequences for g in s.segments]
    layout = any(len(row) > 1 for row in rows) or any(b != SHARED for s in sequences for b in s.branches)
    as_tensor = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    return LogpBatch(
        input_ids=as_tensor(ids),
        attention_mask=as_tensor(mask),
        position_ids=as_tensor(positions) if layout else None,
        gather_index=as_tensor(gather),
        targets=as_tensor(targets),
        segment=as_tensor(segment),
        num_segments=num_segments,
        real_tokens=sum(len(s) for s in sequences),
        padded_tokens=len(rows) * width,
        sequence_ids=as_tensor(seq_ids) if layout else None,
        branch_ids=as_tensor(branches) if layout else None,
    )


def collate_pairs(pairs: Sequence[TokenizedPair], pad_id: int, *, prefix_sharing: bool, packing: Packing = "off") -> LogpBatch:
    """Segments 0..B-1 are the chosen completions, B..2B-1 the rejected ones, whatever the layout.
    Prefix-shared: one sequence per pair, the prompt computed once. Otherwise two sequences per pair,
    [prompt|chosen] and [prompt|rejected], which any causal LM can score unpacked."""
    b = len(pairs)
    if prefix_sharing:
        sequences = [_prefix_shared(p, i, b + i) for i, p in enumerate(pairs)]
    else:
        sequences = [_plain(p.prompt, p.chosen, i) for i, p in enumerate(pairs)]
        sequences += [_plain(p.prompt, p.rejected, b + i) for i, p in enumerate(pairs)]
    return _collate(sequences, pad_id, 2 * b, packing)


def collate_concatenated(pairs: Sequence[TokenizedPair], pad_id: int) -> LogpBatch:
    """2B rows: [prompt|chosen] for each pair, then [prompt|rejected]. Works with any causal LM."""
    return collate_pairs(pairs, pad_id, prefix_sharing=False)


def collate_prefix_shared(pairs: Sequence[TokenizedPair], pad_id: int) -> LogpBatch:
    """B rows: [prompt|chosen|rejected], the prompt computed once."""
    return collate_pairs(pairs, pad_id, prefix_sharing=True)


def collate_examples(examples: Sequence[TokenizedExample], pad_id: int, packing: Packing = "off") -> LogpBatch:
    """[prompt|completion] sequences (SFT examples, sampled completions for KL); segment i is example i.
    Anything with `.prompt` and `.completion` token lists will do."""
    return _collate([_plain(e.prompt, e.completion, i) for i, e in enumerate(examples)], pad_id, len(examples), packing)
