"""The contract between the Judge (ordering, cache, aggregation) and a backend (asking someone).

A backend only ever sees texts in a fixed order (shown as A and B) and reports how the first
one did; it knows nothing of policies, baselines or the cache.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Protocol


class JudgeUnavailableError(RuntimeError):
    """The backend could not answer (retries exhausted, endpoint refused); answers so far are cached.

    refused: the endpoint rejected the credentials (401/403), so retrying later will not help."""

    def __init__(self, message: str, refused: bool = False):
        super().__init__(message)
        self.refused = refused

    def __reduce__(self):
        return type(self), (str(self), self.refused)


@dataclass(frozen=True)
class Request:
    key: str  # the cache key; equal keys are asked once
    prompt: str  # the item's prompt (the backend renders it with its template)
    first: str  # shown as A
    second: str  # shown as B


@dataclass(frozen=True)
class Answer:
    first_wins: Optional[float]  # 1.0 A wins, 0.0 B wins, 0.5 tie, None no valid verdict
    raw: str
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Optional[float] = 0.0  # None: unknown (a paid model whose price is not configured)


OnAnswer = Callable[[Request, Answer], None]


class Backend(Protocol):
    name: str  # part of the cache key
    model_id: str  # part of the cache key
    order_sensitive: bool  # False: showing A/B the other way round cannot change the verdict

    def answer(self, requests: list[Request], on_answer: OnAnswer) -> None:
        """Judge every request, calling on_answer as soon as each one is final (any order)."""
        ...
