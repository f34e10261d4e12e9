"""Length-controlled win rate, as in AlpacaEval 2.

Dubois, Galambosi, Liang & Hashimoto, "Length-Controlled AlpacaEval: A Simple Way to Debias
Automatic Evaluators" (2024, arXiv:2404.04475) fit a GLM to the judge's preferences,

    logit P(policy preferred | x) = (theta_m - theta_b) + phi * tanh((len_m - len_b) / std(len_m - len_b))
                                    + (psi_m - psi_b) * gamma_x,

and report the win rate it predicts with the length term set to zero. The instruction-difficulty
term gamma_x is estimated across the many models of a leaderboard; with one policy against one
baseline it is not identifiable and is left out, so here

    logit p_i = theta + phi * tanh(d_i / std(d)),   LC win rate = sigmoid(theta),

the preference at zero length difference. Targets are the item scores (1 win, 0 loss, 0.5 tie or
an order-inconsistent pair), fitted as soft labels by Newton's method on the binomial
log-likelihood with a small ridge (RIDGE) on both coefficients, which keeps the fit finite when the
preferences are perfectly separated (e.g. all wins). Lengths are in tokens (AlpacaEval counts
characters); the standardization makes the unit matter little.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

RIDGE = 1e-3
MAX_ITER = 100


def length_feature(policy_lengths: Sequence[float], baseline_lengths: Sequence[float]) -> np.ndarray:
    """tanh of the standardized length difference (zeros when every difference is the same)."""
    d = np.asarray(policy_lengths, dtype=np.float64) - np.asarray(baseline_lengths, dtype=np.float64)
    sd = d.std(ddof=1) if d.size > 1 else 0.0
    return np.tanh(d / sd) if sd > 0 else np.zeros_like(d)


def fit(y: np.ndarray, feature: np.ndarray) -> tuple[float, float]:
    """(theta, phi) maximizing sum y log p + (1-y) log(1-p) - RIDGE/2 (theta^2 + phi^2)."""
    X = np.stack([np.ones_like(feature), feature], axis=1)
    w = np.zeros(2)
    for _ in range(MAX_ITER):
        p = 1.0 / (1.0 + np.exp(-(X @ w)))
        grad = X.T @ (y - p) - RIDGE * w
        hess = -(X.T * (p * (1.0 - p))) @ X - RIDGE * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w = w - step
        if np.max(np.abs(step)) < 1e-10:
            break
    return float(w[0]), float(w[1])


def lc_win_rate(scores: Sequence[Optional[float]], policy_lengths: Sequence[float], baseline_lengths: Sequence[float]) -> Optional[float]:
    """The length-controlled win rate of the valid items (score not None); None without any."""
    keep = [i for i, s in enumerate(scores) if s is not None]
    if not keep:
        return None
    y = np.asarray([scores[i] for i in keep], dtype=np.float64)
    feature = length_feature([policy_lengths[i] for i in keep], [baseline_lengths[i] for i in keep])
    theta, _ = fit(y, feature)
    return 1.0 / (1.0 + math.exp(-theta))
