"""Held-out means held out: evaluation prompts that are, or are cut from, a training text are removed.

An evaluation prompt record is checked by its `prompt` and by its `source` (the text it was cut
from, e.g. the whole IMDb review its first tokens come from) against every training text: the SFT
examples' prompts and whole completions, and the DPO pairs' prompts. So a review SFT saw verbatim
opens no evaluation prompt, even though its SFT prompt is empty and no pair was cut from it.

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


def split_overlaps(eval_prompts: Sequence[dict], training_texts: Iterable[str]) -> tuple[list[dict], list[dict]]:
    """(kept, removed): eval prompt records whose `prompt` and `source` (when given) match no training
    text, and those where either does."""
    seen = {normalize_prompt(p) for p in training_texts if isinstance(p, str)} - {""}
    kept, removed = [], []
    for record in eval_prompts:
        texts = (record["prompt"], record.get("source"))
        (removed if any(isinstance(t, str) and normalize_prompt(t) in seen for t in texts) else kept).append(record)
    return kept, removed
