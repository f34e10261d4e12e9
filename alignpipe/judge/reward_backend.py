"""Judging with a scalar reward: the text with the higher score wins, equal scores tie (0.5).

This is the DPO paper's IMDb protocol (a sentiment classifier as ground-truth reward). The
order shown cannot matter, so the Judge asks each pair once whatever `both_orders` says.
"""
from __future__ import annotations

from alignpipe.judge.backend import Answer, OnAnswer, Request
from alignpipe.rewards import Scorer


def first_wins_by_score(first: float, second: float) -> float:
    if first > second:
        return 1.0
    if first < second:
        return 0.0
    return 0.5


class RewardBackend:
    name = "reward"
    order_sensitive = False

    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer
        self.model_id = scorer.name

    def scores(self, texts: list[str]) -> list[float]:
        return self.scorer.score(texts)

    def answer(self, requests: list[Request], on_answer: OnAnswer) -> None:
        if not requests:
            return
        unique = list(dict.fromkeys(t for r in requests for t in (r.first, r.second)))
        score_of = dict(zip(unique, self.scorer.score(unique)))
        for r in requests:
            first, second = score_of[r.first], score_of[r.second]
            raw = f"score(A)={first!r} score(B)={second!r}"
            on_answer(r, Answer(first_wins_by_score(first, second), raw))
