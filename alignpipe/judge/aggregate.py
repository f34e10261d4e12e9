"""From verdicts to a win rate: per-item scores, binomial standard error, and the order checks.

With both orders an item's score is the mean of its two verdicts, so a pair the judge decides
differently when the texts swap places scores 0.5, a tie (MT-Bench's rule, Zheng et al. 2023,
"Judging LLM-as-a-Judge", sec. 3.4). Two numbers say how much order mattered: the disagreement rate
(items whose two verdicts differ) and the position bias (share of verdicts won by the text shown
first; 0.5 for a judge that ignores position).

An item judged in both orders with only one valid verdict is invalid (None), not scored by the
verdict that survived: that verdict carries the position bias the other order would have cancelled.
A judge that always answers "A" and fails only when the policy is shown second would otherwise
win every failed item (0.575 instead of 0.5 at a 15% failure rate). Invalid items leave the
denominator and are counted, so max_invalid_fraction still guards against a judge failing often.

The standard error is the standard deviation of the per-item scores over sqrt(n): with ties and
averaged orders it is smaller than the binomial sqrt(p(1-p)/n) (all ties: 0)."""
from __future__ import annotations

from typing import Optional

from alignpipe.intervals import stderr
from alignpipe.judge.ordering import POLICY_FIRST
from alignpipe.judge.records import JudgeResult, Verdict


def item_score(verdicts: list[Verdict]) -> Optional[float]:
    """Mean of an item's verdicts (both orders: 1, 0.5 or 0); None when any of them is invalid."""
    wins = [v.policy_wins for v in verdicts]
    return None if not wins or any(w is None for w in wins) else sum(wins) / len(wins)


def win_rate_and_stderr(scores: list[Optional[float]]) -> tuple[Optional[float], Optional[float]]:
    """Mean of the valid scores and their standard deviation over sqrt(n) (None below two)."""
    valid = [s for s in scores if s is not None]
    if not valid:
        return None, None
    return sum(valid) / len(valid), stderr(valid)


def disagreement_rate(per_item: list[list[Verdict]]) -> Optional[float]:
    """Share of items judged validly in both orders whose two verdicts differ: position bias."""
    pairs = [(a.policy_wins, b.policy_wins) for a, b in (v for v in per_item if len(v) == 2)]
    both_valid = [(a, b) for a, b in pairs if a is not None and b is not None]
    if not both_valid:
        return None
    return sum(a != b for a, b in both_valid) / len(both_valid)


def first_wins_share(verdicts: list[Verdict]) -> Optional[float]:
    """Share of valid verdicts in which the text shown first won (ties count half): position bias."""
    firsts = [v.policy_wins if v.order == POLICY_FIRST else 1.0 - v.policy_wins for v in verdicts if v.policy_wins is not None]
    return sum(firsts) / len(firsts) if firsts else None


def total_cost(verdicts: list[Verdict]) -> Optional[float]:
    """What these verdicts cost; None (unknown) when any of them had no known price."""
    costs = [v.cost_usd for v in verdicts]
    return None if any(c is None for c in costs) else sum((c for c in costs if c is not None), 0.0)


def summarize(verdicts: list[Verdict], verdicts_per_item: int, order_sensitive: bool = True) -> JudgeResult:
    """order_sensitive False (a reward judge): the order shown cannot matter, so no position bias."""
    if verdicts_per_item < 1 or len(verdicts) % verdicts_per_item:
        raise ValueError(f"{len(verdicts)} verdicts do not split into items of {verdicts_per_item}")
    per_item = [verdicts[i : i + verdicts_per_item] for i in range(0, len(verdicts), verdicts_per_item)]
    scores = [item_score(v) for v in per_item]
    win_rate, stderr = win_rate_and_stderr(scores)
    fresh = [v for v in verdicts if not v.cached]
    n_valid = sum(s is not None for s in scores)
    return JudgeResult(
        verdicts=verdicts,
        item_wins=scores,
        win_rate=win_rate,
        stderr=stderr,
        n_valid=n_valid,
        n_invalid=len(scores) - n_valid,
        disagreement_rate=disagreement_rate(per_item) if verdicts_per_item == 2 else None,
        first_wins_share=first_wins_share(verdicts) if order_sensitive else None,
        input_tokens=sum(v.input_tokens for v in fresh),
        output_tokens=sum(v.output_tokens for v in fresh),
        cost_usd=total_cost(fresh),
        n_cached=len(verdicts) - len(fresh),
        verdicts_per_item=verdicts_per_item,
    )
