"""When to retry an API call and how long to wait: the policy, kept apart from the client.

Transient failures (rate limits, overload, server errors, timeouts, dropped connections) are
retried with exponential backoff and jitter; a server's Retry-After always wins over our guess.
Anything else (bad request, wrong key, unknown model) fails at once: retrying cannot fix it.
"""
from __future__ import annotations

import email.utils
import random
import time
from typing import Mapping, Optional

RETRYABLE_STATUS = frozenset({408, 409, 429})
RETRY_AFTER_CAP_S = 120.0  # a Retry-After of an hour would stall the run for an hour: wait at most this


def is_retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUS or status >= 500


def retry_after_seconds(headers: Optional[Mapping[str, str]]) -> Optional[float]:
    """Seconds the server asked us to wait (retry-after-ms, or Retry-After as seconds or an HTTP date)."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff_delay(
    attempt: int, base_s: float, max_s: float, rng: random.Random, retry_after: Optional[float] = None
) -> float:
    """The wait before retry number `attempt` (0-based): Retry-After if given, else jittered 2^attempt."""
    if retry_after is not None:  # the server's word wins, up to the longest wait we would choose ourselves
        return min(retry_after, max(max_s, RETRY_AFTER_CAP_S))
    ceiling = min(max_s, base_s * (2.0**attempt))
    return ceiling * rng.uniform(0.5, 1.0)
