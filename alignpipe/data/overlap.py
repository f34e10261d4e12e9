"""Held-out means held out: evaluation prompts that also occur among the training prompts are removed.

Matching is exact after normalization, so that formatting differences do not hide a repeat: Unicode
NFKC, case folded, every whitespace run one space, and for TL;DR prompts the SUBREDDIT line dropped
(the comparisons dataset renders the same post without it). Near-duplicates are not searched for.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Iterable, Sequence

_SUBREDDIT_LINE = re.compile(r"^\s*SUBREDDIT:[^\n]*\n", re.IGNORECASE)
_SPACE = re.compile(r"\s+")


def normalize_prompt(prompt: str) -> str:
    text = unicodedata.normalize("NFKC", prompt)
    text = _SUBREDDIT_LINE.sub("", text, count=1)
    return _SPACE.sub(" ", text.casefold()).strip()


def split_overlaps(eval_prompts: Sequence[dict], training_prompts: Iterable[str]) -> tuple[list[dict], list[dict]]:
    """(kept, removed): eval prompt records whose `prompt` matches no training prompt, and those that do."""
    seen = {normalize_prompt(p) for p in training_prompts if isinstance(p, str)} - {""}
    kept, removed = [], []
    for record in eval_prompts:
        (removed if normalize_prompt(record["prompt"]) in seen else kept).append(record)
    return kept, removed
