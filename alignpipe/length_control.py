"""Length-controlled win rate, after AlpacaEval 2, and the rule for when there is none.

Dubois, Galambosi, Liang & Hashimoto, "Length-Controlled AlpacaEval: A Simple Way to Debias
Automatic Evaluators" (2024, arXiv:2404.04475) fit a GLM to the judge's preferences,

    logit P(policy preferred | x) = (theta_m - theta_b) + phi * tanh((len_m - len_b) / std(len_m - len_b))
                                    + (psi_m - psi_b) * gamma_x,

and report the win rate it predicts with the length difference set to zero. The instruction-difficulty
term gamma_x is estimated across the many models of a leaderboard; with one policy against one
baseline it is not identifiable and is left out. Here, with g_i = tanh(d_i / sd(d)) and its mean g_bar,

    logit p_i = a + b * (g_i - g_bar),   LC win rate = sigmoid(a - b * g_bar)   (the prediction at d = 0).

The feature is centred so that a is the (well-determined) log-odds at the run's average length
difference and the small ridge (RIDGE, on a and b; it keeps the fit finite when the preferences are
separated) does not pull the reading at zero; d itself is not shifted, since zero difference is where
LC is read. Targets are the per-prompt scores (1 win, 0 loss, 0.5 tie, averages of both orders or of
several samples in between), fitted as soft labels by Newton's method on the binomial
log-likelihood. The 95% CI is a Wald interval on the logit of LC with the model's inverse Fisher
information: for labels in [0, 1] with mean p the variance is at most p(1 - p), so ties only make
it conservative. Lengths are in tokens (AlpacaEval counts characters); the standardization makes the
unit matter little.

Within one run the length slope is learned only from the run's own spread of length differences,
so the reading at zero is an extrapolation unless zero lies within that spread. AlpacaEval 2 warns
about "extreme length changes"; here there is no LC at all (a reason instead) when

- the judge is a reward model: length is part of what it scores (the effect), not a judge's bias
  (alignpipe.evaluation decides this, not this module);
- every length difference is the same (sd 0; all zero is fine: then LC is the raw win rate);
- |g_bar| > MAX_OFFSET * sd(g) ("extreme length changes"): zero difference lies outside the bulk of
  the observed differences, e.g. a policy always 5-50 tokens longer, where the old uncentred fit
  gave LC 0.28 for verdicts that ignored length entirely (raw and true LC 0.75). With the bound at
  one standard deviation the logit's variance is at most twice the raw win rate's;
- fewer than MIN_ITEMS valid prompts: too few to fit a slope (the smallest size simulated).

Measured (tests/test_statistics.py): coverage >= 0.95 at n = 32..256 where LC is printed, with
verdicts independent of length, following AlpacaEval's model, or a misspecified (linear) one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Optional, Sequence

import numpy as np

from alignpipe.intervals import LEVEL, win_rate_ci

RIDGE = 1e-3
MAX_ITER = 100
MIN_ITEMS = 32
MAX_OFFSET = 1.0  # |mean feature| / sd(feature) beyond which zero difference is an extrapolation


@dataclass(frozen=True)
class LengthControlled:
    """The LC win rate with its 95% CI, or None with the reason (note) why there is none."""

    win_rate: Optional[float]
    ci: Optional[tuple[float, float]]
    note: Optional[str]  # None when win_rate is a fitted LC; else why there is none, or why it equals the raw rate
    offset: Optional[float] = None  # |mean feature| / sd(feature): how far zero difference lies from the data


def length_feature(policy_lengths: Sequence[float], baseline_lengths: Sequence[float]) -> np.ndarray:
    """tanh of the standardized length difference along the last axis (zeros where every difference
    is the same); zero at equal lengths."""
    d = np.asarray(policy_lengths, dtype=np.float64) - np.asarray(baseline_lengths, dtype=np.float64)
    sd = d.std(axis=-1, ddof=1, keepdims=True) if d.shape[-1] > 1 else np.zeros(d.shape[:-1] + (1,))
    return np.where(sd > 0, np.tanh(d / np.where(sd > 0, sd, 1.0)), 0.0)


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x)))  # overflow-free


def _newton(y: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, H_aa, H_ab, H_bb) of max sum y log p + (1-y) log(1-p) - RIDGE/2 (a^2 + b^2), logit p = a + b h,
    along the last axis (any leading batch axes), H the negative Hessian at the optimum."""
    a = np.zeros(y.shape[:-1])
    b = np.zeros(y.shape[:-1])
    for _ in range(MAX_ITER):
        p = _sigmoid(a[..., None] + b[..., None] * h)
        r, w = y - p, p * (1 - p)
        ga, gb = r.sum(-1) - RIDGE * a, (r * h).sum(-1) - RIDGE * b
        haa, hab, hbb = w.sum(-1) + RIDGE, (w * h).sum(-1), (w * h * h).sum(-1) + RIDGE
        det = haa * hbb - hab * hab
        da, db = (hbb * ga - hab * gb) / det, (haa * gb - hab * ga) / det
        a, b = a + da, b + db
        if max(np.max(np.abs(da)), np.max(np.abs(db))) < 1e-10:
            break
    p = _sigmoid(a[..., None] + b[..., None] * h)
    w = p * (1 - p)
    return a, b, w.sum(-1) + RIDGE, (w * h).sum(-1), (w * h * h).sum(-1) + RIDGE


def fit(y, feature) -> tuple:
    """(a, b) of the centred fit logit p = a + b (feature - mean feature), along the last axis."""
    y, g = np.asarray(y, dtype=np.float64), np.asarray(feature, dtype=np.float64)
    a, b, *_ = _newton(y, g - g.mean(-1, keepdims=True))
    return (float(a), float(b)) if a.ndim == 0 else (a, b)


def lc_estimate(y, feature, level: float = LEVEL):
    """(LC win rate, CI low, CI high, offset) along the last axis, with no rule applied: the fit's
    prediction at zero length difference and its Wald interval on the logit scale."""
    y, g = np.asarray(y, dtype=np.float64), np.asarray(feature, dtype=np.float64)
    g_bar = g.mean(-1)
    a, b, haa, hab, hbb = _newton(y, g - g_bar[..., None])
    det = haa * hbb - hab * hab
    # var(a - b g_bar) with the inverse Fisher information [[hbb, -hab], [-hab, haa]] / det
    var = (hbb + 2 * g_bar * hab + g_bar**2 * haa) / det
    eta, half = a - b * g_bar, NormalDist().inv_cdf(0.5 + level / 2) * np.sqrt(var)
    sd_g = g.std(-1, ddof=1)
    offset = np.abs(g_bar) / np.where(sd_g > 0, sd_g, np.nan)
    return _sigmoid(eta), _sigmoid(eta - half), _sigmoid(eta + half), offset


def length_controlled(scores: Sequence[Optional[float]], policy_lengths: Sequence[float], baseline_lengths: Sequence[float],
                      level: float = LEVEL) -> LengthControlled:
    """The LC win rate of the valid items (score not None) under the rules above, or the reason there is none."""
    keep = [i for i, s in enumerate(scores) if s is not None]
    if not keep:
        return LengthControlled(None, None, "no valid verdicts")
    y = np.asarray([scores[i] for i in keep], dtype=np.float64)
    d = np.asarray([policy_lengths[i] for i in keep], dtype=np.float64) - np.asarray([baseline_lengths[i] for i in keep], dtype=np.float64)
    if not d.any():
        return LengthControlled(float(y.mean()), win_rate_ci(list(y), level), "no length differences: the raw win rate")
    if len(keep) < MIN_ITEMS:
        return LengthControlled(None, None, f"too few prompts ({len(keep)} < {MIN_ITEMS}) to fit a length slope")
    if np.all(d == d[0]):
        return LengthControlled(None, None, f"extreme length changes: every length difference is {d[0]:g} tokens")
    if np.all(y == y[0]):
        return LengthControlled(float(y[0]), win_rate_ci(list(y), level), "every verdict the same: the raw win rate")
    lc, lo, hi, offset = (float(v) for v in lc_estimate(y, length_feature(d, np.zeros_like(d)), level))
    if offset > MAX_OFFSET:
        share = float(np.mean(d > 0))
        return LengthControlled(None, None, f"extreme length changes: the policy is longer on {share:.0%} of prompts, so equal "
                                            f"length lies outside the observed differences", offset)  # fmt: skip
    return LengthControlled(lc, (lo, hi), None, offset)


def lc_win_rate(scores: Sequence[Optional[float]], policy_lengths: Sequence[float], baseline_lengths: Sequence[float]) -> Optional[float]:
    """The LC win rate alone (None when the rules above give none)."""
    return length_controlled(scores, policy_lengths, baseline_lengths).win_rate
