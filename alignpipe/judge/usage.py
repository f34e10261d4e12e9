"""What judging spent, per purpose: every judgment a Judge makes is counted, whatever asked for it.

A Judge keeps a ledger (Judge.usage) that each call of Judge.judge adds to under its purpose: the
win rates ("win_rate"), the judge-vs-humans check ("human_agreement"), the best-of-N ranking
("best_of_n"), judge-labelled preference pairs ("pair_labelling"); callers that name none count
under "judging" (Copeland ranking: "ranking").
`judgments` are the verdicts asked for in this run (one request each: an item shown in one order;
paid for, with a priced judge); cached verdicts (`n_cached`) cost nothing. Cost is unknown (None)
as soon as one judgment's price is unknown, never a partial sum.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Optional

USAGE_KEYS = ("judgments", "cost_usd", "input_tokens", "output_tokens", "n_cached")

Usage = dict[str, Optional[float]]


def empty_usage() -> Usage:
    return {k: 0.0 for k in USAGE_KEYS}


def result_usage(result) -> Usage:
    """A JudgeResult's spend: fresh verdicts are the paid calls (a repeat within one call is cached)."""
    return {
        "judgments": float(len(result.verdicts) - result.n_cached),
        "cost_usd": None if result.cost_usd is None else float(result.cost_usd),
        "input_tokens": float(result.input_tokens),
        "output_tokens": float(result.output_tokens),
        "n_cached": float(result.n_cached),
    }


def add_usage(so_far: Usage, more: Mapping[str, Optional[float]]) -> Usage:
    """so_far + more, key by key; an unknown (None) value stays unknown."""
    for k in USAGE_KEYS:
        a, b = so_far.get(k, 0.0), more.get(k, 0.0)
        so_far[k] = None if a is None or b is None else a + b
    return so_far


def total_usage(by_purpose: Mapping[str, Mapping[str, Optional[float]]]) -> Usage:
    total = empty_usage()
    for usage in by_purpose.values():
        add_usage(total, usage)
    return total


def usage_metrics(by_purpose: Mapping[str, Mapping[str, Optional[float]]], prefix: str = "") -> dict[str, float]:
    """Metrics of a stage's spend: judge/<key> in total and judge/<purpose>/<key>; an unknown cost is
    absent, never 0."""
    out = {f"{prefix}judge/{k}": v for k, v in total_usage(by_purpose).items() if v is not None}
    for purpose, usage in by_purpose.items():
        out.update({f"{prefix}judge/{purpose}/{k}": v for k, v in usage.items() if v is not None})
    return out


class UsageLedger:
    """Spend per purpose, in the order purposes first appeared."""

    def __init__(self) -> None:
        self.by_purpose: dict[str, Usage] = {}

    def record_answers(self, purpose: str, answers: Iterable) -> None:
        """Judgments paid for (backend Answers: tokens and cost each; cost None = unknown price)."""
        usage = self.by_purpose.setdefault(purpose, empty_usage())
        for a in answers:
            add_usage(usage, {"judgments": 1.0, "cost_usd": a.cost_usd, "input_tokens": float(a.input_tokens or 0),
                              "output_tokens": float(a.output_tokens or 0), "n_cached": 0.0})

    def record_cached(self, purpose: str, n: int) -> None:
        """Verdicts served from the cache: free in this run."""
        add_usage(self.by_purpose.setdefault(purpose, empty_usage()), {"n_cached": float(n)})


def merged(ledgers: Iterable[UsageLedger]) -> dict[str, Usage]:
    """Several judges' ledgers as one spend per purpose (e.g. the evaluation judge and the best-of-N labeller)."""
    out: dict[str, Usage] = {}
    for ledger in ledgers:
        for purpose, usage in ledger.by_purpose.items():
            add_usage(out.setdefault(purpose, empty_usage()), usage)
    return out
