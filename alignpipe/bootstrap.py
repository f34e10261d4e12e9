"""Percentile bootstrap confidence intervals over evaluation items (prompts), seeded.

The unit resampled is the item, because items are what was sampled from the population of prompts:
an item judged in both orders contributes its one averaged score, never two "independent" verdicts.
Efron & Tibshirani, "An Introduction to the Bootstrap" (1993), ch. 13 (percentile intervals).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

LEVEL = 0.95


def resample_indices(n_items: int, n_resamples: int, seed: int) -> np.ndarray:
    """[n_resamples, n_items] item indices drawn with replacement; a function of (n, B, seed) only."""
    return np.random.default_rng(seed).integers(0, n_items, size=(n_resamples, n_items))


def percentile_interval(estimates: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    tail = (1.0 - level) / 2
    lo, hi = np.quantile(estimates, [tail, 1.0 - tail])
    return float(lo), float(hi)


def mean_ci(values: Sequence[Optional[float]], *, n_resamples: int, seed: int, level: float = LEVEL) -> Optional[tuple[float, float]]:
    """95% percentile-bootstrap CI of the mean of the non-None values; None when there are none."""
    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if x.size == 0:
        return None
    idx = resample_indices(x.size, n_resamples, seed)
    return percentile_interval(x[idx].mean(axis=1), level)


def statistic_ci(
    n_items: int, statistic: Callable[[np.ndarray], float], *, n_resamples: int, seed: int, level: float = LEVEL
) -> Optional[tuple[float, float]]:
    """95% percentile-bootstrap CI of any statistic of the items, given as a function of item indices
    (e.g. a regression refit on each resample)."""
    if n_items == 0:
        return None
    idx = resample_indices(n_items, n_resamples, seed)
    return percentile_interval(np.array([statistic(row) for row in idx]), level)
