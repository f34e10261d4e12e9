"""The sweep report: members side by side, the reward/KL frontier across them (the paper's
Figure 2), win rate against the swept value, and the members' DPO training curves overlaid.

Built from each member's stage outputs (evaluate tables, dpo history), written beside the store
under runs/sweeps/<id>/. Figures use matplotlib.figure.Figure directly, never pyplot.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from matplotlib.figure import Figure

from alignpipe.plots import DPI, PALETTE, is_number
from alignpipe.stages.artifacts import read_eval_tables, read_history

REPORT = "sweep_report.md"
FIGURES = {"frontier": "frontier.png", "win_rate": "win_rate_vs_grid.png", "training": "training_curves.png"}
FRONTIER_T = 1.0  # KL is only an estimate of KL(pi || ref) on samples drawn at temperature 1


def member_rows(points, results) -> list[dict[str, Any]]:
    """One row per member: its grid values, outcomes and the tables the plots need."""
    rows = []
    for point, result in zip(points, results):
        evaluate = read_eval_tables(result.outcome("evaluate").out_dir)
        dpo = result.outcome("dpo")
        rows.append({
            "label": point.label,
            "values": dict(point.values),
            "dpo_key": dpo.key[:12],
            "dpo": dpo.metrics,
            "win_rates": evaluate["win_rates"],
            "reward_kl": evaluate["reward_kl"],
            "history": read_history(dpo.out_dir),
            "report": result.summary()["report"],
        })  # fmt: skip
    return rows


def frontier_points(row: dict[str, Any]) -> list[tuple[float, float]]:
    """(KL, mean reward) of the member's DPO policy at T=1, when both were measured."""
    return [(r["kl"], r["mean_reward"]) for r in row["reward_kl"]
            if r["policy"] == "dpo" and r["temperature"] == FRONTIER_T and is_number(r.get("kl")) and is_number(r.get("mean_reward"))]  # fmt: skip


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, format="png")
    return path


def plot_frontier(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    points = [(row["label"], *pt) for row in rows for pt in frontier_points(row)]
    if not points:
        return None
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    for i, (label, kl, reward) in enumerate(points):
        ax.scatter([kl], [reward], color=PALETTE[i % len(PALETTE)], s=40, label=label, zorder=3)
    sft = [r["mean_reward"] for row in rows for r in row["reward_kl"] if r["policy"] == "sft" and r["temperature"] == FRONTIER_T]
    if sft:
        ax.scatter([0.0], [sum(sft) / len(sft)], marker="s", color="black", label="SFT (reference)", zorder=3)
    ax.set_xlabel("KL(policy || SFT), nats, T = 1 samples")
    ax.set_ylabel("mean reward")
    ax.set_title("Reward / KL frontier across sweep members")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def plot_win_rate_vs_grid(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """For a sweep over one numeric value: win rate (first baseline) against it, a line per temperature."""
    keys = list(rows[0]["values"]) if rows else []
    if len(keys) != 1 or not all(is_number(r["values"][keys[0]]) for r in rows):
        return None
    key = keys[0]
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    temps = sorted({w["temperature"] for r in rows for w in r["win_rates"]})
    for i, t in enumerate(temps):
        pts = []
        for r in rows:
            first = next((w for w in r["win_rates"] if w["temperature"] == t), None)  # the first baseline's row
            if first is not None and is_number(first["win_rate"]):
                pts.append((r["values"][key], first["win_rate"], first["stderr"] if is_number(first["stderr"]) else 0.0))
        if pts:
            pts.sort()
            x, y, e = zip(*pts)
            ax.errorbar(x, y, yerr=e, marker="o", capsize=4, color=PALETTE[i % len(PALETTE)], label=f"T = {t:g}")
    ax.axhline(0.5, color="black", linestyle="--", linewidth=1)
    ax.set_ylim(0, 1)
    ax.set_xlabel(key)
    ax.set_ylabel("DPO win rate (held-out prompts)")
    ax.set_title(f"Win rate vs {key} (error bars: ±1 stderr)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_training(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    if not any(r["history"] for r in rows):
        return None
    fig = Figure(figsize=(9.6, 3.8))
    loss_ax, margin_ax = fig.subplots(1, 2)
    for i, row in enumerate(rows):
        steps = [h["step"] for h in row["history"]]
        colour = PALETTE[i % len(PALETTE)]
        loss_ax.plot(steps, [h["loss"] for h in row["history"]], color=colour, label=row["label"])
        margin_ax.plot(steps, [h.get("rewards/margins") for h in row["history"]], color=colour, label=row["label"])
    loss_ax.set_title("DPO loss")
    margin_ax.set_title("implicit reward margin (chosen - rejected)")
    for ax in (loss_ax, margin_ax):
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    loss_ax.legend(fontsize=8)
    return _save(fig, path)


def _fmt(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if is_number(value) else "-"


def markdown(rows: Sequence[dict[str, Any]], figures: dict[str, Path | None]) -> str:
    lines = ["# alignpipe sweep report", "", f"{len(rows)} members; stages they share were computed once and reused.", ""]
    temps = sorted({w["temperature"] for r in rows for w in r["win_rates"]})
    header = ["member", "dpo key", "final loss", "reward acc."] + [f"win rate T={t:g}" for t in temps] + ["KL (T=1)", "reward (T=1)"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        wr = {w["temperature"]: w for w in r["win_rates"]}
        cells = [f"`{r['label']}`", f"`{r['dpo_key']}`", _fmt(r["dpo"].get("final_loss")), _fmt(r["dpo"].get("final_reward_accuracy"))]
        for t in temps:
            w = wr.get(t)
            cells.append(f"{w['win_rate']:.2f} ± {w['stderr']:.2f} vs {w['baseline']}" if w and is_number(w["win_rate"]) and is_number(w["stderr"]) else "-")
        pts = frontier_points(r)
        cells += [_fmt(pts[0][0]) if pts else "-", _fmt(pts[0][1]) if pts else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    captions = {"frontier": "Reward against KL from the SFT reference, each member's DPO policy on T = 1 samples.",
                "win_rate": "Win rate against the swept value, one line per sampling temperature.",
                "training": "The members' DPO training curves."}  # fmt: skip
    for name, path in figures.items():
        if path is not None:
            lines += [f"![{name}]({path.name})", "", captions[name], ""]
        else:
            lines += [f"> {name}: not drawn ({'no T = 1 KL measured' if name == 'frontier' else 'needs one numeric grid value' if name == 'win_rate' else 'no history'}).", ""]
    lines += ["Each member's own report:", ""] + [f"- `{r['label']}`: {r['report']}" for r in rows]
    return "\n".join(lines) + "\n"


def write_sweep_report(out_dir: Path, points, results) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = member_rows(points, results)
    figures = {
        "frontier": plot_frontier(rows, out_dir / FIGURES["frontier"]),
        "win_rate": plot_win_rate_vs_grid(rows, out_dir / FIGURES["win_rate"]),
        "training": plot_training(rows, out_dir / FIGURES["training"]),
    }
    path = out_dir / REPORT
    path.write_text(markdown(rows, figures))
    return path
