"""The report's figures, one function per plot, each writing a PNG and returning its path.

Figures are built from `matplotlib.figure.Figure` directly, never through pyplot: no global
backend is selected, nothing tries to open a display, and concurrent callers share no state.
Rows arrive already validated by `alignpipe.report`; missing values (None/NaN) are skipped here.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from matplotlib.figure import Figure

DPI = 120
# One colour per series, stable across figures so "sft" is the same colour everywhere.
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")
PAPER_COLOURS = {"DPO": "#7f7f7f", "PPO": "#c7c7c7"}


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def save_figure(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, format="png")
    return path


def _colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _ci_error(rows: Sequence[Mapping[str, Any]], value: str, prefix: str) -> list[list[float]]:
    """Asymmetric error bars [[below...], [above...]] from each row's 95% CI (0 where it has none)."""
    below, above = [], []
    for r in rows:
        lo, hi = r.get(f"{prefix}ci_low"), r.get(f"{prefix}ci_high")
        ok = is_number(lo) and is_number(hi)
        below.append(max(0.0, r[value] - lo) if ok else 0.0)
        above.append(max(0.0, hi - r[value]) if ok else 0.0)
    return [below, above]


def win_rate_vs_temperature(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Win rate against sampling temperature, one line per baseline, 95% Wilson CI bars, a 0.5 line."""
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    baselines = list(dict.fromkeys(r["baseline"] for r in rows))
    for i, baseline in enumerate(baselines):
        pts = sorted((r for r in rows if r["baseline"] == baseline and is_number(r["win_rate"])), key=lambda r: r["temperature"])
        if not pts:
            continue
        ax.errorbar([r["temperature"] for r in pts], [r["win_rate"] for r in pts], yerr=_ci_error(pts, "win_rate", ""),
                    marker="o", capsize=4, color=_colour(i), label=f"DPO vs {baseline}")
        lc = [r for r in pts if is_number(r.get("lc_win_rate"))]
        if lc:
            ax.plot([r["temperature"] for r in lc], [r["lc_win_rate"] for r in lc], linestyle=":", marker="x",
                    color=_colour(i), label=f"length-controlled vs {baseline}")
    ax.axhline(0.5, color="black", linestyle="--", linewidth=1, label="tie (0.5)")
    ax.set_ylim(0.0, 1.0)
    # A fixed 0..1 span (widened when needed) keeps plots from different runs comparable and a
    # single temperature from being blown up into a meaningless axis.
    temps = [r["temperature"] for r in rows]
    ax.set_xlim(min(0.0, *temps) - 0.05, max(1.0, *temps) + 0.05)
    ax.set_xlabel("sampling temperature")
    ax.set_ylabel("win rate (judge)")
    ax.set_title("DPO win rate vs temperature (bars: 95% Wilson CI)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return save_figure(fig, path)


def reward_kl_frontier(rows: Sequence[Mapping[str, Any]], path: Path, title: str = "Reward vs KL frontier (T = 1)") -> Path:
    """The paper's Figure 2 from frontier rows of any number of policies (alignpipe.stages.artifacts
    documents the row format). Rows with the same `series` (a sweep member; default one series) are
    joined in DPO-step order, so a run's checkpoints trace its path; SFT points (KL 0) are stars.
    Error bars are the rows' 95% CIs on both axes."""
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    names = list(dict.fromkeys(r.get("series", "DPO") for r in rows if r["policy"] != "sft"))
    for i, name in enumerate(names):
        pts = sorted((r for r in rows if r["policy"] != "sft" and r.get("series", "DPO") == name and is_number(r["kl"])
                      and is_number(r["mean_reward"])), key=lambda r: (r.get("dpo_step") is None, r.get("dpo_step") or 0))  # fmt: skip
        if not pts:
            continue
        ax.errorbar([r["kl"] for r in pts], [r["mean_reward"] for r in pts], xerr=_ci_error(pts, "kl", "kl_"),
                    yerr=_ci_error(pts, "mean_reward", "reward_"), fmt="-o", capsize=3, color=_colour(i), label=name)
        for r in pts:
            ax.annotate(r["label"], (r["kl"], r["mean_reward"]), textcoords="offset points", xytext=(5, 4), fontsize=7)
    sft = [r for r in rows if r["policy"] == "sft" and is_number(r["mean_reward"])]
    if sft:
        ax.errorbar([r["kl"] for r in sft], [r["mean_reward"] for r in sft], yerr=_ci_error(sft, "mean_reward", "reward_"),
                    fmt="*", markersize=12, capsize=3, color="black", label="SFT (reference, KL 0)")
    ax.set_xlabel("KL(policy ‖ SFT), nats per sequence (T = 1 samples)")
    ax.set_ylabel("mean reward")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return save_figure(fig, path)


def series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pts = [(r["step"], r[key]) for r in history if is_number(r.get("step")) and is_number(r.get(key))]
    return [p[0] for p in pts], [p[1] for p in pts]


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over up to `window` points: shows the trend of a noisy per-step curve."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _plot_curve(ax, steps: list[float], values: list[float], colour: str, label: str) -> None:
    """Raw values faintly, plus a smoothed line once there are enough points for noise to matter."""
    if len(values) >= 20:
        ax.plot(steps, values, color=colour, alpha=0.25, linewidth=1)
        ax.plot(steps, moving_average(values, max(5, len(values) // 20)), color=colour, label=f"{label} (smoothed)")
    else:
        ax.plot(steps, values, color=colour, marker="o", markersize=3, label=label)


DPO_PANELS: tuple[tuple[str, tuple[str, ...], Optional[float]], ...] = (
    # (title, history keys drawn in it, reference line)
    ("DPO loss", ("loss",), None),  # its reference line is the loss at step 0, passed in
    ("reward margin (chosen − rejected)", ("rewards/margins",), 0.0),
    ("reward accuracy", ("rewards/accuracies",), 0.5),
    ("implicit rewards", ("rewards/chosen", "rewards/rejected"), 0.0),
)


def present_panels(history: Sequence[Mapping[str, Any]]) -> list[tuple[str, tuple[str, ...], Optional[float]]]:
    return [p for p in DPO_PANELS if any(series(history, k)[0] for k in p[1])]


def dpo_training_curves(
    history: Sequence[Mapping[str, Any]], path: Path, loss_at_start: Optional[float] = None
) -> Path:
    """Loss, reward margin, reward accuracy and chosen/rejected rewards per optimizer step.

    `loss_at_start` (the loss while policy == reference, e.g. log 2 for sigmoid DPO) is drawn as a
    dotted line on the loss panel, so "has it moved at all" is visible at a glance.
    """
    panels = present_panels(history)
    cols = 2 if len(panels) > 1 else 1
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(6.0 * cols, 3.4 * rows))
    for i, (title, keys, ref) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        for j, key in enumerate(keys):
            steps, values = series(history, key)
            if steps:
                _plot_curve(ax, steps, values, _colour(j), key.split("/")[-1])
        if keys == ("loss",):
            if loss_at_start is not None:
                ax.axhline(loss_at_start, color="black", linestyle=":", linewidth=1, label="at start (policy = reference)")
        elif ref is not None:
            ax.axhline(ref, color="black", linestyle=":", linewidth=1)
        if keys == ("rewards/accuracies",):
            ax.set_ylim(0.0, 1.05)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    return save_figure(fig, path)


SFT_LOSS_KEYS = ("loss", "eval_loss", "eval/loss")  # train loss, then held-out loss as either spelling


def sft_training_curves(history: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """SFT cross-entropy per step (and held-out loss where it was logged)."""
    fig = Figure(figsize=(6.4, 3.6))
    ax = fig.add_subplot()
    for j, key in enumerate(SFT_LOSS_KEYS):
        steps, values = series(history, key)
        if steps:
            _plot_curve(ax, steps, values, _colour(min(j, 1)), "train loss" if key == "loss" else "held-out loss")
    ax.set_title("SFT loss (token cross-entropy)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return save_figure(fig, path)


def ood_win_rates(
    rows: Sequence[Mapping[str, Any]], paper: Optional[Mapping[str, Mapping[float, float]]], path: Path
) -> Path:
    """Grouped bars per temperature: our OOD win rate(s) with 95% CIs, and the paper's Table 1 numbers
    beside them only when `paper` is given (the rows are comparable with it)."""
    paper = paper or {}
    temps = sorted({r["temperature"] for r in rows} | {t for by_t in paper.values() for t in by_t})
    ours = list(dict.fromkeys(r["baseline"] for r in rows))
    bars: list[tuple[str, str, list[Optional[float]], Optional[list[list[float]]]]] = []
    for i, baseline in enumerate(ours):
        by_t = {r["temperature"]: r for r in rows if r["baseline"] == baseline}
        values = [by_t[t]["win_rate"] if t in by_t and is_number(by_t[t]["win_rate"]) else None for t in temps]
        shown = [by_t[t] if t in by_t and is_number(by_t[t]["win_rate"]) else {"win_rate": 0.0} for t in temps]
        bars.append((f"DPO vs {baseline}", _colour(i), values, _ci_error(shown, "win_rate", "")))
    for method, by_t in paper.items():
        bars.append((f"paper {method} (Table 1)", PAPER_COLOURS.get(method, "#aaaaaa"), [by_t.get(t) for t in temps], None))

    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    width = 0.8 / len(bars)
    for k, (label, colour, values, errors) in enumerate(bars):
        xs = [i + (k - (len(bars) - 1) / 2) * width for i in range(len(temps))]
        keep = [j for j, v in enumerate(values) if v is not None]
        if not keep:
            continue
        yerr = [[errors[0][j] for j in keep], [errors[1][j] for j in keep]] if errors else None
        drawn = ax.bar([xs[j] for j in keep], [values[j] for j in keep], width=width, yerr=yerr, capsize=3, color=colour,
                       label=label, edgecolor="black", linewidth=0.5)
        ax.bar_label(drawn, labels=[f"{values[j]:.2f}" for j in keep], fontsize=8, padding=2)
    ax.axhline(0.5, color="black", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(temps)), [f"T={t:g}" for t in temps])
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("win rate (judge)")
    ax.set_title("Out of distribution" + (" vs the DPO paper's Table 1" if paper else " (bars: 95% Wilson CI)"))
    ax.grid(alpha=0.3, axis="y")
    ax.legend(loc="upper right", fontsize=8)
    return save_figure(fig, path)
