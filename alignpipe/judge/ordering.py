"""Which text the judge sees first, per item: the paper randomizes it to cancel position bias.

The coin is a function of (seed, item index) only, so a rerun, a resumed run or a run over a
longer list of items shows every item in the same order as before and its cache entry matches.
"""
from __future__ import annotations

import hashlib
import random

POLICY_FIRST = "policy_first"
BASELINE_FIRST = "baseline_first"
ORDERS = (POLICY_FIRST, BASELINE_FIRST)


def item_order(seed: int, index: int) -> str:
    digest = hashlib.sha256(f"judge-order:{seed}:{index}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    return POLICY_FIRST if rng.random() < 0.5 else BASELINE_FIRST


def shown_texts(order: str, policy: str, baseline: str) -> tuple[str, str]:
    """(text shown as A, text shown as B)."""
    if order == POLICY_FIRST:
        return policy, baseline
    if order == BASELINE_FIRST:
        return baseline, policy
    raise ValueError(f"order must be one of {ORDERS}, got '{order}'")


def policy_wins(order: str, first_wins: float | None) -> float | None:
    """Turn 'how did the text shown first do' into 'how did the policy do'."""
    if first_wins is None:
        return None
    return first_wins if order == POLICY_FIRST else 1.0 - first_wins
