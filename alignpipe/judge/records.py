"""The judge's public data: what goes in (Comparison), what comes out (Verdict, JudgeResult)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class Comparison:
    """One item to judge: the policy's text against a baseline's, for the same prompt."""

    prompt: str
    policy: str
    baseline: str


@dataclass
class Verdict:
    """One judgment of one item in one order.

    policy_wins: 1.0 win, 0.0 loss, 0.5 tie (reward backend only), None when the judge's answer
    had no valid verdict. Token counts are those the judgment cost when it was made; a cached
    verdict (cached=True) cost nothing in this run. cost_usd is None when it is unknown (no
    price configured for a paid judge).
    """

    policy_wins: Optional[float]
    raw: str
    order: str  # "policy_first" / "baseline_first": which text the judge saw as A
    cached: bool
    input_tokens: int
    output_tokens: int
    cost_usd: Optional[float] = 0.0


@dataclass
class JudgeResult:
    """All verdicts (item-major: with both_orders, item i owns verdicts 2i and 2i+1) and their summary.

    win_rate is the mean of the valid per-item scores; an item judged in both orders scores the
    mean of its valid verdicts. Invalid items are left out of the denominator and counted.
    Tokens and cost are what this run spent: cached verdicts add nothing. cost_usd is None
    (unknown) when any judgment asked in this run had no known price; metrics() then leaves it out.
    """

    verdicts: list[Verdict]
    win_rate: Optional[float]
    stderr: Optional[float]
    n_valid: int
    n_invalid: int
    disagreement_rate: Optional[float]  # both_orders: share of items whose two verdicts differ
    input_tokens: int
    output_tokens: int
    cost_usd: Optional[float]
    n_cached: int
    item_wins: list[Optional[float]] = field(default_factory=list)  # per item; None: no valid verdict
    verdicts_per_item: int = 1
    first_wins_share: Optional[float] = None  # position bias: share of valid verdicts won by the text shown first

    def by_item(self) -> list[list[Verdict]]:
        k = self.verdicts_per_item
        return [self.verdicts[i : i + k] for i in range(0, len(self.verdicts), k)]

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """The headline numbers as a flat dict for a metrics sink; undefined values are left out."""
        values = {
            "win_rate": self.win_rate,
            "win_rate_stderr": self.stderr,
            "n_valid": self.n_valid,
            "n_invalid": self.n_invalid,
            "disagreement_rate": self.disagreement_rate,
            "first_wins_share": self.first_wins_share,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": self.cost_usd,
            "n_cached": self.n_cached,
        }
        return {f"{prefix}{k}": float(v) for k, v in values.items() if v is not None}
