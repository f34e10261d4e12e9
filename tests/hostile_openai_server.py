"""A hostile OpenAI-compatible endpoint: every request fails at random, in every way a real one does.

Each request for a judgment fails with probability `fault_rate`, with a fault kind drawn from
RETRYABLE_FAULTS (429 with Retry-After, 5xx, an answer later than the client's timeout, the
connection closed or reset mid-body, a 200 with truncated JSON, HTML, or no/empty choices).
The draw is seeded by (seed, request key, attempt number), not by arrival order, so a run is
reproducible however its concurrent requests interleave, and `attempts_needed` says in advance
how many requests each judgment must take: a client that retries exactly the failures matches it.
"""
from __future__ import annotations

import random
from typing import Any, Optional

from fake_openai_server import BODY_FAULTS, FakeOpenAIServer

RETRYABLE_FAULTS = ("429", "500", "502", "503", *BODY_FAULTS)


class HostileOpenAIServer(FakeOpenAIServer):
    def __init__(self, *, seed: int = 0, fault_rate: float = 0.3, kinds: tuple[str, ...] = RETRYABLE_FAULTS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seed = seed
        self.fault_rate = fault_rate
        self.kinds = kinds

    def planned_fault(self, key: str, nth: int) -> Optional[str]:
        rng = random.Random(f"{self.seed}:{key}:{nth}")
        return rng.choice(self.kinds) if rng.random() < self.fault_rate else None

    def fault_for(self, content: str, key: str, nth: int) -> Optional[str]:
        return self.planned_fault(key, nth)

    def attempts_needed(self, key: str) -> int:
        """Requests until the first that succeeds."""
        nth = 1
        while self.planned_fault(key, nth) is not None:
            nth += 1
        return nth

    def planned_faults(self, key: str) -> list[str]:
        return [self.planned_fault(key, n) for n in range(1, self.attempts_needed(key))]  # type: ignore[misc]
