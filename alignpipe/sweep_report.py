"""The sweep report: members side by side, the reward/KL frontier across them (the paper's
Figure 2), win rate against the swept value, and the members' DPO training curves overlaid.

Built from each member's stage outputs (evaluate tables, dpo history), written beside the store
under runs/sweeps/<id>/. Figures use matplotlib.figure.Figure directly, never pyplot.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from matplotlib.figure import Figure

from alignpipe.plots import PALETTE, is_number, reward_kl_frontier, save_figure
from alignpipe.stages.artifacts import read_eval_tables, read_history

REPORT = "sweep_report.md"
FIGURES = {"frontier": "frontier.png", "win_rate": "win_rate_vs_grid.png", "training": "training_curves.png"}


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
            "frontier": evaluate["frontier"],
            "history": read_history(dpo.out_dir),
            "report": result.summary()["report"],
        })  # fmt: skip
    return rows


def frontier_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every member's frontier.json rows (its DPO policy and checkpoints, each from T=1 samples), the
    member named as the series; SFT points once per distinct SFT model."""
    out, sft_seen = [], set()
    for row in rows:
        for point in row["frontier"]:
            if point["policy"] == "sft":
                key = (point["mean_reward"], point["n"])
                if key in sft_seen:
                    continue
                sft_seen.add(key)
            out.append({**point, "series": row["label"]})
    return out


def plot_frontier(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    points = frontier_rows(rows)
    if not any(p["policy"] != "sft" for p in points):
        return None
    return reward_kl_frontier(points, path, title="Reward / KL frontier across sweep members (T = 1)")


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
                low, high = first.get("ci_low"), first.get("ci_high")
                below, above = (first["win_rate"] - low, high - first["win_rate"]) if is_number(low) and is_number(high) else (0.0, 0.0)
                pts.append((r["values"][key], first["win_rate"], below, above))
        if pts:
            pts.sort()
            x, y, below, above = zip(*pts)
            ax.errorbar(x, y, yerr=[below, above], marker="o", capsize=4, color=PALETTE[i % len(PALETTE)], label=f"T = {t:g}")
    ax.axhline(0.5, color="black", linestyle="--", linewidth=1)
    ax.set_ylim(0, 1)
    ax.set_xlabel(key)
    ax.set_ylabel("DPO win rate (held-out prompts)")
    ax.set_title(f"Win rate vs {key} (error bars: 95% Wilson CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


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
    return save_figure(fig, path)


def _fmt(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if is_number(value) else "-"


def _win_rate_cell(w: dict[str, Any] | None) -> str:
    if not w or not is_number(w["win_rate"]):
        return "-"
    ci = f" [{w['ci_low']:.2f}, {w['ci_high']:.2f}]" if is_number(w.get("ci_low")) and is_number(w.get("ci_high")) else ""
    return f"{w['win_rate']:.2f}{ci} vs {w['baseline']}"


def markdown(rows: Sequence[dict[str, Any]], figures: dict[str, Path | None]) -> str:
    lines = ["# alignpipe sweep report", "", f"{len(rows)} members; stages they share were computed once and reused.", ""]
    temps = sorted({w["temperature"] for r in rows for w in r["win_rates"]})
    header = ["member", "dpo key", "final loss", "reward acc."] + [f"win rate T={t:g} [95% CI]" for t in temps] + ["KL (T=1)", "reward (T=1)"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        wr = {w["temperature"]: w for w in r["win_rates"]}
        cells = [f"`{r['label']}`", f"`{r['dpo_key']}`", _fmt(r["dpo"].get("final_loss")), _fmt(r["dpo"].get("final_reward_accuracy"))]
        for t in temps:
            w = wr.get(t)
            cells.append(_win_rate_cell(w))
        final = next((p for p in r["frontier"] if p["label"] == "dpo"), None)  # the final DPO policy at T=1
        cells += [_fmt(final["kl"]) if final else "-", _fmt(final["mean_reward"]) if final else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    captions = {"frontier": "Reward against KL from the SFT reference on T = 1 samples: each member's DPO policy (and its "
                            "checkpoints with evaluate.checkpoints), error bars 95% Student t intervals over prompts.",
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
