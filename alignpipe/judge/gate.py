"""The validity gate: a judge that cannot follow the answer format fails judging in one line.

A win rate over the few parseable answers of a judge too weak for its prompt is garbage, so
when more than judge.max_invalid_fraction of one judging call's verdicts are invalid, judging
raises JudgeInvalidVerdictsError with the share and two raw answers. Verdicts are counted as
they arrive (cached ones first). Once the invalid ones exceed the limit for the whole call, no
later answer can bring the share back under it: the judge stops asking there, and pays no more.
"""
from __future__ import annotations

import json

EXAMPLE_CHARS = 160  # of each raw answer shown in the error
N_EXAMPLES = 2


class JudgeInvalidVerdictsError(RuntimeError):
    """Too many invalid verdicts. Built from one string, so it pickles (Prefect may ship it across processes)."""


def snippet(raw: str, limit: int = EXAMPLE_CHARS) -> str:
    """A raw answer on one line: quoted, newlines escaped, cut after `limit` characters."""
    text = raw if len(raw) <= limit else raw[:limit] + "…"
    return json.dumps(text, ensure_ascii=False)


class ValidityGate:
    """Counts the verdicts of one judging call as they arrive; `failed` once the call certainly fails."""

    def __init__(self, max_invalid_fraction: float, n_total: int) -> None:
        if not 0.0 <= max_invalid_fraction <= 1.0:
            raise ValueError(f"judge.max_invalid_fraction must be in [0, 1], got {max_invalid_fraction}")
        self.max_invalid_fraction = max_invalid_fraction
        self.n_total = n_total
        self.n_seen = 0
        self.n_invalid = 0
        self.examples: list[str] = []  # the first distinct raw answers of invalid verdicts

    def add(self, valid: bool, raw: str, count: int = 1) -> None:
        """One judgment that stands for `count` verdicts of the call (an item repeated in it)."""
        self.n_seen += count
        if not valid:
            self.n_invalid += count
            if len(self.examples) < N_EXAMPLES and raw not in self.examples:
                self.examples.append(raw)

    @property
    def failed(self) -> bool:
        """True once more than max_invalid_fraction of all n_total verdicts are certain to be invalid."""
        return self.n_total > 0 and self.n_invalid / self.n_total > self.max_invalid_fraction

    def error(self, judge_name: str) -> JudgeInvalidVerdictsError:
        share = f"{self.n_invalid / self.n_seen:.0%}"
        limit = f"judge.max_invalid_fraction={self.max_invalid_fraction:g}"
        if self.n_seen < self.n_total:
            counted = f"{self.n_invalid} of the first {self.n_seen} verdicts ({share}) have no valid verdict"
            verdict = f"already more than {limit} of all {self.n_total}, so judging stopped"
        else:
            counted = f"{self.n_invalid} of {self.n_total} verdicts ({share}) have no valid verdict"
            verdict = f"more than {limit}"
        examples = " | ".join(snippet(raw) for raw in self.examples)
        if len(self.examples) == 1 and self.n_invalid > 1:
            examples += " (every one the same)"
        return JudgeInvalidVerdictsError(
            f"judge {judge_name}: {counted}, {verdict}; raw answers: {examples}; "
            "the verdicts received are cached, so a rerun after fixing judge.model or judge.template asks only what changed"
        )
