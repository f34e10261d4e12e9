"""Building preference pairs from scored samples, the way the paper did for IMDb.

k completions per prompt are scored; pairs come from all orderings (k=4 gives 6 pairs) or
best-vs-worst. Pairs whose score gap is at most `min_margin` are ties: dropped and counted.
Empty completions (the model stopped at once) cannot be a DPO completion: skipped and counted.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from typing import Sequence


@dataclass
class PairStats:
    prompts: int = 0
    samples: int = 0
    pairs: int = 0
    ties: int = 0
    empty: int = 0
    margins: list[float] = field(default_factory=list)

    def as_metrics(self) -> dict[str, float]:
        m = sorted(self.margins)
        return {
            "prompts": float(self.prompts),
            "samples": float(self.samples),
            "pairs": float(self.pairs),
            "ties": float(self.ties),
            "empty_samples": float(self.empty),
            "margin_mean": sum(m) / len(m) if m else 0.0,
            "margin_median": m[len(m) // 2] if m else 0.0,
        }

    def margin_histogram(self, bins: int = 10) -> dict[str, list[float]]:
        if not self.margins:
            return {"edges": [], "counts": []}
        lo, hi = min(self.margins), max(self.margins)
        width = (hi - lo) / bins or 1.0
        counts = [0] * bins
        for m in self.margins:
            counts[min(bins - 1, int((m - lo) / width))] += 1
        return {"edges": [lo + i * width for i in range(bins + 1)], "counts": counts}


def pairs_from_scores(
    prompt: str,
    completions: Sequence[str],
    scores: Sequence[float],
    *,
    pairing: str,
    min_margin: float,
    stats: PairStats,
    prompt_index: int,
) -> list[dict]:
    """Preference pairs (chosen = higher score) from one prompt's scored completions."""
    stats.prompts += 1
    stats.samples += len(completions)
    usable = [i for i, c in enumerate(completions) if c.strip()]
    stats.empty += len(completions) - len(usable)
    if pairing == "all":
        candidates = list(combinations(usable, 2))
    elif pairing == "best_worst":
        order = sorted(usable, key=lambda i: scores[i])
        candidates = [(order[-1], order[0])] if len(order) >= 2 else []
    else:
        raise ValueError(f"pairs.pairing: '{pairing}' is not one of all, best_worst")
    out = []
    for i, j in candidates:
        hi, lo = (i, j) if scores[i] >= scores[j] else (j, i)
        margin = scores[hi] - scores[lo]
        if margin <= min_margin or completions[hi] == completions[lo]:
            stats.ties += 1
            continue
        stats.pairs += 1
        stats.margins.append(margin)
        out.append(
            {
                "prompt": prompt,
                "chosen": completions[hi],
                "rejected": completions[lo],
                "chosen_score": float(scores[hi]),
                "rejected_score": float(scores[lo]),
                "margin": float(margin),
                "prompt_index": prompt_index,
            }
        )
    return out
