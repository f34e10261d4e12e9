"""The DPO training objective: policy log-probs of a pair batch against stored reference log-probs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from alignpipe.batching import LogpBatch
from alignpipe.dpo.loss import preference_loss
from alignpipe.tokenization import TokenizedPair
from pipeline_config.schema import DPOConfig


@dataclass(frozen=True)
class PreferenceItem:
    """A tokenized pair and its reference log-probs (computed once, before training)."""

    pair: TokenizedPair
    ref_chosen: float
    ref_rejected: float

    def __len__(self) -> int:
        return len(self.pair)


@dataclass
class PreferenceBatch:
    logp: LogpBatch
    ref_chosen: torch.Tensor
    ref_rejected: torch.Tensor

    def to(self, device) -> "PreferenceBatch":
        return PreferenceBatch(self.logp.to(device), self.ref_chosen.to(device), self.ref_rejected.to(device))

    @property
    def real_tokens(self) -> int:
        return self.logp.real_tokens

    @property
    def padded_tokens(self) -> int:
        return self.logp.padded_tokens


def _accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """1 where the chosen reward is higher, 0 where lower, 1/2 for a tie (as at step 0, where both are
    exactly 0: the policy prefers neither, so accuracy starts at 0.5, not 0)."""
    return (r_chosen > r_rejected).float() + 0.5 * (r_chosen == r_rejected).float()


class DPOObjective:
    def __init__(self, cfg: DPOConfig, collate_pairs: Callable[[Sequence[TokenizedPair]], LogpBatch]):
        self.cfg = cfg
        self.collate_pairs = collate_pairs

    def units(self, item: PreferenceItem) -> float:
        return 1.0

    def collate(self, items: Sequence[PreferenceItem]) -> PreferenceBatch:
        return PreferenceBatch(
            self.collate_pairs([it.pair for it in items]),
            torch.tensor([it.ref_chosen for it in items], dtype=torch.float32),
            torch.tensor([it.ref_rejected for it in items], dtype=torch.float32),
        )

    def _reference(self, scorer, batch: PreferenceBatch, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cfg.reference == "precomputed":
            return batch.ref_chosen, batch.ref_rejected
        inner = getattr(scorer, "module", scorer)  # skip DDP hooks: no gradients flow here
        with torch.no_grad(), inner.lm.disable_adapter():
            ref = inner(batch.logp)
        return ref[:n], ref[n:]

    def __call__(self, scorer, batch: PreferenceBatch, items) -> tuple[torch.Tensor, dict[str, float]]:
        n = len(items)
        logps = scorer(batch.logp)
        chosen, rejected = logps[:n], logps[n:]
        ref_chosen, ref_rejected = self._reference(scorer, batch, n)
        tokens = batch.logp.segment_token_counts().clamp(min=1).to(logps.dtype)
        losses, r_chosen, r_rejected = preference_loss(
            chosen,
            rejected,
            ref_chosen,
            ref_rejected,
            beta=self.cfg.beta,
            loss_type=self.cfg.loss_type,
            label_smoothing=self.cfg.label_smoothing,
            chosen_tokens=tokens[:n],
            rejected_tokens=tokens[n:],
        )
        loss = losses.sum()
        if self.cfg.sft_weight:
            loss = loss + self.cfg.sft_weight * (-chosen / tokens[:n]).sum()
        return loss, {
            "rewards/chosen": r_chosen.sum().item(),
            "rewards/rejected": r_rejected.sum().item(),
            "rewards/margins": (r_chosen - r_rejected).sum().item(),
            "rewards/accuracies": _accuracy(r_chosen, r_rejected).sum().item(),
            "logps/chosen": chosen.detach().sum().item(),
            "logps/rejected": rejected.detach().sum().item(),
        }
