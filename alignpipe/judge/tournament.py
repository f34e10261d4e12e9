"""Ranking several texts for one prompt with a pairwise judge: Copeland scores (pairwise wins)."""
from __future__ import annotations

from itertools import combinations

from alignpipe.judge.records import Comparison


def copeland_scores(judge, prompts: list[str], completions: list[list[str]], desc: str = "ranking", purpose: str = "ranking") -> list[list[float]]:
    """For each prompt, how many of its other texts the judge prefers each text to (ties and
    order-inconsistent pairs count half). All comparisons go to the judge in one call, so its
    concurrency and cache work across prompts."""
    plan = [(p, i, j) for p, comps in enumerate(completions) for i, j in combinations(range(len(comps)), 2)]
    items = [Comparison(prompt=prompts[p], policy=completions[p][i], baseline=completions[p][j]) for p, i, j in plan]
    result = judge.judge(items, desc=desc, purpose=purpose)  # counted in judge.usage under `purpose`
    wins = [[0.0] * len(c) for c in completions]
    for (p, i, j), w in zip(plan, result.item_wins):
        if w is not None:
            wins[p][i] += w
            wins[p][j] += 1 - w
    return wins
