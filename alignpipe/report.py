"""The run report: PNG plots plus a `report.md` that leads with the result and embeds them.

Inputs are plain data (the dataclasses and TypedDicts below), so the evaluation stages can produce
them from their JSON outputs and this module never has to know where they came from. Every section
is optional: a section without data is replaced by a one-line note saying why, never a crash.
"""
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Optional, Sequence

from typing_extensions import NotRequired, TypedDict

from alignpipe import plots
from alignpipe.plots import is_number

# --------------------------------------------------------------------------------------------
# Input structures
# --------------------------------------------------------------------------------------------

# One line of a training stage's `history.jsonl`: one logged optimizer step, as the shared
# training loop writes it. Only `step` is needed; every other key is used when present
# (`eval_loss` or `eval/loss` is SFT's held-out loss, on the steps where it was measured).
HistoryRow = TypedDict(
    "HistoryRow",
    {
        "step": int,
        "epoch": float,
        "loss": float,
        "eval_loss": float,
        "eval/loss": float,
        "rewards/chosen": float,
        "rewards/rejected": float,
        "rewards/margins": float,
        "rewards/accuracies": float,
        "lr": float,
        "grad_norm": float,
        "tokens_per_s": float,
        "seconds_per_step": float,
        "peak_memory_mb": float,
    },
    total=False,
)


class WinRateRow(TypedDict):
    """In-distribution judge result for one (temperature, baseline). win_rate/stderr are None
    when no verdict was valid."""

    temperature: float
    baseline: str  # "sft" | "reference_text" | "chosen"
    win_rate: Optional[float]
    stderr: Optional[float]
    n_valid: int
    n_invalid: int


class RewardKLRow(TypedDict):
    """Mean reward of one policy's samples at one temperature, with its sequence-level
    KL(policy || reference) when `evaluate.compute_kl` was on (else kl is None)."""

    policy: Literal["dpo", "sft"]
    temperature: float
    mean_reward: float
    reward_stderr: Optional[float]
    kl: Optional[float]


class OODRow(TypedDict):
    """CNN/DailyMail (out-of-distribution) judge result for one (temperature, baseline)."""

    temperature: float
    baseline: str  # "reference_text" (the article's highlights, as in the paper) | "sft"
    win_rate: Optional[float]
    stderr: Optional[float]
    n_valid: int
    mean_reward: NotRequired[Optional[float]]


class StageRecord(TypedDict):
    """One stage output the report was built from: its cache key, when and how fast it was computed.

    Whether a stage was reused in a given run is a property of that run, not of the output, so it
    lives in MLflow (tag cached=true|false) and the CLI summary, not in this cached report."""

    name: str
    key: str
    built: NotRequired[Optional[str]]  # ISO-8601 time the output was computed
    seconds: NotRequired[Optional[float]]  # wall time it took to compute


@dataclass
class RunInfo:
    """What was run: enough to reproduce it and to judge how far to trust the numbers."""

    preset: str
    model: str
    hyperparameters: dict[str, Any] = field(default_factory=dict)  # e.g. beta, lr, loss_type, batch_size
    stages: list[StageRecord] = field(default_factory=list)
    judge: Optional[str] = None  # e.g. "openai:gpt-4o", "reward:vader"
    total_seconds: Optional[float] = None


@dataclass
class ReportInputs:
    run: RunInfo
    sft_history: list[HistoryRow] = field(default_factory=list)
    dpo_history: list[HistoryRow] = field(default_factory=list)
    win_rates: list[WinRateRow] = field(default_factory=list)
    reward_kl: list[RewardKLRow] = field(default_factory=list)
    ood: list[OODRow] = field(default_factory=list)


# Rafailov et al. 2023, "Direct Preference Optimization", Table 1: GPT-4 win rate of policies
# trained on TL;DR against the reference summaries (article highlights) of CNN/DailyMail test
# articles, by sampling temperature. Method -> {temperature: win rate}.
PAPER_TABLE1: dict[str, dict[float, float]] = {
    "DPO": {0.0: 0.36, 0.25: 0.31},
    "PPO": {0.0: 0.26, 0.25: 0.23},
}

FIGURES = {
    "win_rate": "win_rate_vs_temperature.png",
    "frontier": "reward_vs_kl.png",
    "dpo_training": "training_dpo.png",
    "sft_training": "training_sft.png",
    "ood": "ood_vs_paper.png",
}
REPORT_FILE = "report.md"
Z95 = 1.96
TAIL_FRACTION = 0.1  # "final" training metrics: mean over the last 10% of logged steps


def read_history(path: str | Path) -> list[HistoryRow]:
    """A training stage's `history.jsonl` as rows; a missing file is an empty history."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _require(rows: Sequence[Mapping[str, Any]], keys: Iterable[str], section: str) -> None:
    """Fail early with the section's name: a malformed row is a bug upstream, not a missing section."""
    keys = sorted(keys)
    for i, row in enumerate(rows):
        missing = [k for k in keys if k not in row]
        if missing:
            raise ValueError(f"{section} row {i} lacks {', '.join(missing)}: {dict(row)}")


def validate(inputs: ReportInputs) -> None:
    _require(inputs.win_rates, WinRateRow.__required_keys__, "win_rates")
    _require(inputs.reward_kl, RewardKLRow.__required_keys__, "reward_kl")
    _require(inputs.ood, OODRow.__required_keys__, "ood")
    _require(inputs.run.stages, StageRecord.__required_keys__, "run.stages")


# --------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.{digits}g}"
        return f"{value:.{digits}f}"
    return str(value)


def fmt_seconds(seconds: Optional[float]) -> str:
    if not is_number(seconds):
        return "n/a"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{int(minutes)} min {secs:.0f} s"
    return f"{int(minutes // 60)} h {int(minutes % 60)} min"


def fmt_metric(value: Optional[float]) -> str:
    """Four significant digits: losses, learning rates and tokens/s share one column."""
    return f"{value:.4g}" if is_number(value) else "n/a"


def fmt_param(value: Any) -> str:
    """A hyperparameter as written in a config: 1e-06 and 0.1 as such, text and lists as code."""
    if isinstance(value, bool) or value is None:
        return f"`{value}`"
    if isinstance(value, (int, float)):
        return f"{value:g}"
    return f"`{value}`"


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return lines


def ci95(win_rate: Optional[float], stderr: Optional[float]) -> Optional[tuple[float, float]]:
    if not (is_number(win_rate) and is_number(stderr)):
        return None
    return win_rate - Z95 * stderr, win_rate + Z95 * stderr


def verdict(win_rate: Optional[float], stderr: Optional[float]) -> str:
    """Whether the 95% interval (normal approximation) excludes a tie."""
    interval = ci95(win_rate, stderr)
    if interval is None:
        return "no valid verdicts"
    lo, hi = interval
    if lo > 0.5:
        return "DPO preferred"
    if hi < 0.5:
        return "baseline preferred"
    return "not distinguishable from a tie"


def _ci_text(row: Mapping[str, Any]) -> str:
    interval = ci95(row["win_rate"], row["stderr"])
    return "n/a" if interval is None else f"[{interval[0]:.3f}, {interval[1]:.3f}]"


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


@dataclass
class Section:
    title: str
    how_to_read: str
    body: list[str] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    omitted: Optional[str] = None  # why there is nothing to show

    def markdown(self) -> list[str]:
        lines = [f"## {self.title}", ""]
        if self.omitted:
            return lines + [f"> Omitted: {self.omitted}", ""]
        lines += [f"*How to read this:* {self.how_to_read}", ""]
        for fig in self.figures:
            lines += [f"![{fig.stem.replace('_', ' ')}]({fig.name})", ""]
        return lines + self.body + [""]


def _valid(rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [r for r in rows if is_number(r["win_rate"])]


def best_by_baseline(rows: Sequence[WinRateRow]) -> dict[str, WinRateRow]:
    """Each baseline's row at the temperature where DPO did best."""
    best: dict[str, WinRateRow] = {}
    for row in _valid(rows):
        current = best.get(row["baseline"])
        if current is None or row["win_rate"] > current["win_rate"]:
            best[row["baseline"]] = row
    return best


def win_rate_section(rows: Sequence[WinRateRow], out_dir: Path) -> Section:
    section = Section(
        "Win rate vs temperature (in distribution)",
        "each point is the share of held-out prompts where the judge preferred the DPO sample over the "
        "baseline's at that sampling temperature. Above the dashed 0.5 line DPO wins; bars are ±1 standard "
        "error, so a point about two bars clear of 0.5 is a real difference rather than judge noise.",
    )
    if not rows:
        section.omitted = "no in-distribution win-rate results in this run."
        return section
    if _valid(rows):
        section.figures.append(plots.win_rate_vs_temperature(rows, out_dir / FIGURES["win_rate"]))
    else:
        section.body += ["No comparison produced a valid verdict, so there is nothing to plot.", ""]
    if len({r["temperature"] for r in rows}) == 1:
        section.body += ["Only one temperature was evaluated, so each baseline's curve is a single point.", ""]
    ordered = sorted(rows, key=lambda r: (r["baseline"], r["temperature"]))
    section.body += table(
        ["baseline", "temperature", "win rate", "± stderr", "95% CI", "verdict", "valid", "invalid"],
        (
            [r["baseline"], fmt(r["temperature"], 2), fmt(r["win_rate"]), fmt(r["stderr"]), _ci_text(r),
             verdict(r["win_rate"], r["stderr"]), r["n_valid"], r["n_invalid"]]
            for r in ordered
        ),
    )
    return section


def frontier_section(rows: Sequence[RewardKLRow], out_dir: Path) -> Section:
    section = Section(
        "Reward vs KL frontier",
        "each point is one policy at one sampling temperature. Further left means closer to the reference "
        "model (less KL spent), higher means more reward; at equal KL the higher point is the better "
        "trade-off, which is how the DPO paper compares DPO with PPO.",
    )
    if not rows:
        section.omitted = "no reward/KL rows (the reward evaluation did not run)."
        return section
    if any(is_number(r["kl"]) for r in rows):
        section.figures.append(plots.reward_vs_kl(rows, out_dir / FIGURES["frontier"]))
    else:
        section.body += [
            "KL was not measured (set `evaluate.compute_kl: true`), so the frontier plot is omitted; "
            "the mean rewards are below.",
            "",
        ]
    ordered = sorted(rows, key=lambda r: (r["policy"], r["temperature"]))
    section.body += table(
        ["policy", "temperature", "mean reward", "± stderr", "KL (nats/seq)"],
        ([r["policy"], fmt(r["temperature"], 2), fmt(r["mean_reward"]), fmt(r["reward_stderr"]), fmt(r["kl"])]
         for r in ordered),
    )
    return section


def ood_section(rows: Sequence[OODRow], out_dir: Path) -> Section:
    section = Section(
        "Out of distribution: CNN/DailyMail",
        "the policy summarizes news articles unlike its training prompts, and the judge compares each summary "
        "with the article's reference highlights. Bars set our win rate beside the DPO paper's Table 1 at the "
        "same temperature; absolute heights depend on model size and judge, so read the comparison as "
        "'does DPO still beat the reference this often away from its training data', not as an exact match.",
    )
    if not rows:
        section.omitted = "the OOD stage produced no results."
        return section
    if _valid(rows):
        section.figures.append(plots.ood_vs_paper(rows, PAPER_TABLE1, out_dir / FIGURES["ood"]))
    if any(r["baseline"] != "reference_text" for r in rows):
        section.body += [
            "Rows whose baseline is not `reference_text` are not comparable with the paper, "
            "which judged against the reference highlights.",
            "",
        ]
    has_reward = any(is_number(r.get("mean_reward")) for r in rows)
    header = ["baseline", "temperature", "win rate", "± stderr", "95% CI", "valid"]
    header += ["mean reward"] if has_reward else []
    header += [f"paper {m}" for m in PAPER_TABLE1]
    body = []
    for r in sorted(rows, key=lambda r: (r["baseline"], r["temperature"])):
        line = [r["baseline"], fmt(r["temperature"], 2), fmt(r["win_rate"]), fmt(r["stderr"]), _ci_text(r), r["n_valid"]]
        line += [fmt(r.get("mean_reward"))] if has_reward else []
        line += [fmt(PAPER_TABLE1[m].get(r["temperature"]), 2) for m in PAPER_TABLE1]
        body.append(line)
    section.body += table(header, body)
    section.body += ["", "Paper (Rafailov et al. 2023, Table 1, GPT-4 judge vs reference highlights):", ""]
    temps = sorted({t for by_t in PAPER_TABLE1.values() for t in by_t})
    section.body += table(
        ["method"] + [f"T={t:g}" for t in temps],
        ([m] + [fmt(PAPER_TABLE1[m].get(t), 2) for t in temps] for m in PAPER_TABLE1),
    )
    return section


def loss_at_start(hyperparameters: Mapping[str, Any]) -> Optional[float]:
    """The DPO loss while policy == reference (h = 0), when the run's settings pin it down."""
    if hyperparameters.get("sft_weight"):
        return None  # an added SFT term makes the starting loss data-dependent
    loss_type = hyperparameters.get("loss_type", "sigmoid")
    if loss_type in ("sigmoid", "cdpo"):
        return math.log(2)
    if loss_type == "hinge":
        return 1.0
    beta = hyperparameters.get("beta")
    if loss_type == "ipo" and is_number(beta) and beta > 0:
        return (1 / (2 * beta)) ** 2
    return None


def tail_mean(history: Sequence[Mapping[str, Any]], key: str) -> Optional[float]:
    values = [r[key] for r in history if is_number(r.get(key))]
    if not values:
        return None
    tail = values[-max(1, math.ceil(len(values) * TAIL_FRACTION)):]
    return sum(tail) / len(tail)


def first_value(history: Sequence[Mapping[str, Any]], key: str) -> Optional[float]:
    return next((r[key] for r in history if is_number(r.get(key))), None)


TRAINING_METRICS = ("loss", "eval_loss", "eval/loss", "rewards/margins", "rewards/accuracies", "rewards/chosen",
                    "rewards/rejected", "grad_norm", "lr", "tokens_per_s", "seconds_per_step", "peak_memory_mb")


def _metric_table(history: Sequence[Mapping[str, Any]]) -> list[str]:
    keys = [k for k in TRAINING_METRICS if first_value(history, k) is not None]
    return table(
        ["metric", "first logged", f"final (mean of the last {int(TAIL_FRACTION * 100)}% logged)"],
        ([k, fmt_metric(first_value(history, k)), fmt_metric(tail_mean(history, k))] for k in keys),
    )


def training_section(inputs: ReportInputs, out_dir: Path) -> Section:
    section = Section(
        "Training curves",
        "DPO's loss should fall from its starting value (dotted line) while the reward margin (chosen minus "
        "rejected implicit reward) rises above 0 and reward accuracy (share of pairs with a positive margin) "
        "climbs above 0.5: the policy is learning to separate preferred from dispreferred answers. "
        "SFT's loss is ordinary next-token cross-entropy.",
    )
    dpo, sft = inputs.dpo_history, inputs.sft_history
    if plots.present_panels(dpo):
        section.figures.append(
            plots.dpo_training_curves(dpo, out_dir / FIGURES["dpo_training"], loss_at_start(inputs.run.hyperparameters))
        )
        section.body += [f"DPO: {len(dpo)} logged steps.", ""] + _metric_table(dpo) + [""]
    else:
        section.body += ["DPO history: none recorded.", ""]
    if any(plots.series(sft, k)[0] for k in plots.SFT_LOSS_KEYS):
        section.figures.append(plots.sft_training_curves(sft, out_dir / FIGURES["sft_training"]))
        section.body += [f"SFT: {len(sft)} logged steps.", ""] + _metric_table(sft)
    else:
        section.body += ["SFT history: none recorded."]
    if not section.figures:
        section.omitted = "no training history (`history.jsonl`) was recorded for SFT or DPO."
    return section


def run_section(run: RunInfo) -> Section:
    section = Section(
        "Run",
        "what produced these numbers. Each stage output is identified by its cache key; the time is what "
        "computing it took when it was built (a later run with the same key reuses it for free).",
    )
    section.body += table(
        ["", ""],
        [["preset", run.preset], ["model", f"`{run.model}`"], ["judge", run.judge or "n/a"],
         ["total wall time", fmt_seconds(run.total_seconds)]],
    )
    if run.hyperparameters:
        section.body += ["", "Hyperparameters:", ""]
        section.body += table(["name", "value"], ([k, fmt_param(v)] for k, v in run.hyperparameters.items()))
    if run.stages:
        section.body += ["", "Stages:", ""]
        section.body += table(
            ["stage", "cache key", "built", "compute time"],
            ([s["name"], f"`{s['key'][:12]}`", s.get("built") or "n/a", fmt_seconds(s.get("seconds"))]
             for s in run.stages),
        )
    return section


def headline(inputs: ReportInputs) -> list[str]:
    """The few lines a reader who stops after the title should take away."""
    lines = []
    by_baseline = best_by_baseline(inputs.win_rates)
    n_temps = len({r["temperature"] for r in inputs.win_rates})
    which = "the only temperature evaluated" if n_temps == 1 else f"the best of {n_temps} temperatures"
    for baseline, r in by_baseline.items():
        lines.append(
            f"- **DPO vs {baseline}: win rate {fmt(r['win_rate'])} ± {fmt(r['stderr'])}** at temperature "
            f"{r['temperature']:g} ({which}; {r['n_valid']} judged, {r['n_invalid']} invalid), "
            f"95% CI {_ci_text(r)}: {verdict(r['win_rate'], r['stderr'])}."
        )
    for r in sorted(_valid(inputs.ood), key=lambda r: (r["baseline"], r["temperature"])):
        paper = ", ".join(
            f"{m} {PAPER_TABLE1[m][r['temperature']]:.2f}" for m in PAPER_TABLE1 if r["temperature"] in PAPER_TABLE1[m]
        )
        lines.append(
            f"- **CNN/DailyMail (OOD) vs {r['baseline']}: {fmt(r['win_rate'])} ± {fmt(r['stderr'])}** at temperature "
            f"{r['temperature']:g}" + (f" (paper: {paper})." if paper else ".")
        )
    acc, margin = tail_mean(inputs.dpo_history, "rewards/accuracies"), tail_mean(inputs.dpo_history, "rewards/margins")
    if acc is not None or margin is not None:
        lines.append(
            f"- DPO training ended with reward accuracy {fmt(acc)} and reward margin {fmt(margin)} "
            f"(mean of the last {int(TAIL_FRACTION * 100)}% of steps)."
        )
    if not lines:
        lines.append("- No evaluation results in this run; see the sections below for what did run.")
    judge = f", judged by {inputs.run.judge}" if inputs.run.judge else ""
    lines.append(f"- Preset `{inputs.run.preset}`, model `{inputs.run.model}`{judge}.")
    return lines


def write_report(out_dir: str | Path, inputs: ReportInputs) -> list[Path]:
    """Write the plots and `report.md` into out_dir; returns the files written (PNGs, then the report)."""
    validate(inputs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = [
        win_rate_section(inputs.win_rates, out_dir),
        frontier_section(inputs.reward_kl, out_dir),
        ood_section(inputs.ood, out_dir),
        training_section(inputs, out_dir),
        run_section(inputs.run),
    ]
    lines = [f"# alignpipe report: {inputs.run.preset}", "", "## Headline", ""] + headline(inputs) + [""]
    for section in sections:
        lines += section.markdown()
    report = out_dir / REPORT_FILE
    report.write_text("\n".join(lines).rstrip() + "\n")
    return [fig for s in sections for fig in s.figures] + [report]
