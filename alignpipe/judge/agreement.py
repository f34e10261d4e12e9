"""The judge against humans: how often it prefers the reply a human preferred (the DPO paper, sec. 6.4).

Each human-labelled pair is judged as (chosen vs rejected) with the judge's own settings (both orders
by default, cached like any judgment). An item scores 1 when the judge prefers the human's choice,
0 when it prefers the other reply, 0.5 when it ties or contradicts itself across orders. Agreement
is the mean over items, with the continuity-corrected Wilson 95% CI over the pairs that win rates
get (alignpipe.intervals; it is the same kind of [0, 1] per-item score). It is measured on the
dataset's pairs, not on DPO-vs-baseline pairs: about 0.5 means the judge is a coin flip on pairs
like these.
"""
from __future__ import annotations

from typing import Any, Sequence

from alignpipe.intervals import win_rate_ci
from alignpipe.judge.records import Comparison


def human_agreement(judge, pairs: Sequence[dict[str, str]], *, source: str) -> dict[str, Any]:
    """The agreement row: {source, n, n_invalid, agreement, ci_low, ci_high, order_disagreement, first_wins_share}."""
    items = [Comparison(prompt=p["prompt"], policy=p["chosen"], baseline=p["rejected"]) for p in pairs]
    result = judge.judge(items, desc="judge vs human labels", purpose="human_agreement")
    ci = win_rate_ci(result.item_wins)
    return {
        "source": source,
        "judge": judge.name,
        "n": result.n_valid,
        "n_invalid": result.n_invalid,
        "agreement": result.win_rate,
        "ci_low": ci[0] if ci else None,
        "ci_high": ci[1] if ci else None,
        "order_disagreement": result.disagreement_rate,
        "first_wins_share": result.first_wins_share,
    }
