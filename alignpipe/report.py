"""The run report: PNG plots plus a `report.md` that leads with the result and embeds them.

Inputs are plain data (the dataclasses and TypedDicts below), so the evaluation stages can produce
them from their JSON outputs and this module never has to know where they came from. Every section
is optional: a section without data is replaced by a one-line note saying why, never a crash.
"""
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from typing_extensions import NotRequired, TypedDict

from alignpipe import plots
from alignpipe.plots import is_number
from alignpipe.train.summary import TAIL_FRACTION, tail_mean

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
    """Judge result for one (temperature, baseline): the share of prompts where the judge preferred
    DPO's sample (ties and order-inconsistent pairs count half). win_rate/stderr are None when no
    verdict was valid. The optional keys are what alignpipe.evaluation writes beside it."""

    temperature: float
    baseline: str  # "sft" | "reference_text" | "chosen" | "best_of_n"
    win_rate: Optional[float]
    stderr: Optional[float]  # sd of the per-prompt scores / sqrt(n)
    n_valid: int  # prompts
    n_invalid: int
    headline: NotRequired[bool]  # the row at evaluate.headline_temperature
    ci_low: NotRequired[Optional[float]]  # 95% continuity-corrected Wilson interval over prompts
    ci_high: NotRequired[Optional[float]]
    lc_win_rate: NotRequired[Optional[float]]  # length-controlled (AlpacaEval 2 regression); None: see lc_note
    lc_ci_low: NotRequired[Optional[float]]
    lc_ci_high: NotRequired[Optional[float]]
    lc_note: NotRequired[Optional[str]]  # why there is no LC (reward judge, extreme length changes, ...), or why it is the raw rate
    samples_per_prompt: NotRequired[int]  # comparisons per prompt (sample j vs sample j); a prompt scores their mean
    reward_diff: NotRequired[Optional[float]]  # reward judge: mean over prompts of DPO's mean reward minus the baseline's
    reward_diff_ci_low: NotRequired[Optional[float]]  # paired t interval over prompts
    reward_diff_ci_high: NotRequired[Optional[float]]
    mean_length_policy: NotRequired[Optional[float]]  # tokens
    mean_length_baseline: NotRequired[Optional[float]]
    order_disagreement: NotRequired[Optional[float]]  # both orders: share of pairs whose verdicts differ
    first_wins_share: NotRequired[Optional[float]]  # position bias: share of verdicts won by the text shown first
    paper_dpo: NotRequired[float]  # the paper's Table 1, only on rows measured as it was
    paper_ppo: NotRequired[float]


class RewardKLRow(TypedDict):
    """Mean reward of one policy's samples at one temperature. kl is KL(policy || SFT) and may be set
    only at T=1 (the only temperature whose samples are the policy's own); else None."""

    policy: str  # "dpo" | "sft" | "best_of_n"
    temperature: float
    mean_reward: float
    reward_stderr: Optional[float]
    kl: Optional[float]
    reward_ci_low: NotRequired[Optional[float]]
    reward_ci_high: NotRequired[Optional[float]]


class FrontierRow(TypedDict):
    """One policy's point on the reward/KL frontier, from its own T=1 samples (frontier.json)."""

    label: str  # "sft", "dpo", "dpo@step10", ...
    policy: str  # "sft" | "dpo"
    dpo_step: Optional[int]
    temperature: float  # always 1.0
    mean_reward: float
    kl: float  # mean over prompts of the sequence-level KL, nats
    n: int
    reward_ci_low: NotRequired[Optional[float]]
    reward_ci_high: NotRequired[Optional[float]]
    kl_ci_low: NotRequired[Optional[float]]
    kl_ci_high: NotRequired[Optional[float]]
    series: NotRequired[str]  # a sweep member's name; one run's rows need none


class OODRow(WinRateRow):
    """Out-of-distribution judge result for one (temperature, baseline), with the policy's mean reward."""

    mean_reward: NotRequired[Optional[float]]


class DataInfo(TypedDict, total=False):
    """Where an evaluation's prompts came from, and how many were removed as training prompts."""

    eval_source: str
    candidate_prompts: int
    overlap_removed: int
    prompts: int


class AgreementRow(TypedDict, total=False):
    """The judge against human labels (alignpipe.judge.agreement)."""

    source: str
    judge: str
    n: int
    n_invalid: int
    agreement: Optional[float]
    ci_low: Optional[float]
    ci_high: Optional[float]
    order_disagreement: Optional[float]
    first_wins_share: Optional[float]


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
    # the sum of the stage outputs' stored compute times: not this run's wall time (a cached run
    # takes seconds; the CLI summary and MLflow's pipeline_seconds measure the run itself)
    total_seconds: Optional[float] = None


@dataclass
class ReportInputs:
    run: RunInfo
    sft_history: list[HistoryRow] = field(default_factory=list)
    dpo_history: list[HistoryRow] = field(default_factory=list)
    win_rates: list[WinRateRow] = field(default_factory=list)
    reward_kl: list[RewardKLRow] = field(default_factory=list)
    frontier: list[FrontierRow] = field(default_factory=list)
    data: DataInfo = field(default_factory=dict)
    judge_agreement: Optional[AgreementRow] = None
    ood: list[OODRow] = field(default_factory=list)
    ood_data: DataInfo = field(default_factory=dict)
    # what the OOD stage measured, in words (the report stage derives it from the OOD config)
    ood_description: str = "CNN/DailyMail articles"


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
    "ood": "ood_win_rates.png",
}
REPORT_FILE = "report.md"


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


KL_TEMPERATURE = 1.0


def validate(inputs: ReportInputs) -> None:
    _require(inputs.win_rates, WinRateRow.__required_keys__, "win_rates")
    _require(inputs.reward_kl, RewardKLRow.__required_keys__, "reward_kl")
    _require(inputs.frontier, FrontierRow.__required_keys__, "frontier")
    _require(inputs.ood, OODRow.__required_keys__, "ood")
    _require(inputs.run.stages, StageRecord.__required_keys__, "run.stages")
    for section, rows in (("reward_kl", inputs.reward_kl), ("frontier", inputs.frontier)):
        for i, row in enumerate(rows):
            if row["temperature"] != KL_TEMPERATURE and is_number(row.get("kl")):
                raise ValueError(f"{section} row {i}: a KL at T={row['temperature']:g}; it is a KL of the policy only for T=1 samples")


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


def row_ci(row: Mapping[str, Any], prefix: str = "") -> Optional[tuple[float, float]]:
    """A row's 95% interval (`<prefix>ci_low`, `<prefix>ci_high`), None when absent."""
    lo, hi = row.get(f"{prefix}ci_low"), row.get(f"{prefix}ci_high")
    return (lo, hi) if is_number(lo) and is_number(hi) else None


def fmt_ci(row: Mapping[str, Any], prefix: str = "", digits: int = 3) -> str:
    interval = row_ci(row, prefix)
    return "n/a" if interval is None else f"[{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"


def verdict(row: Mapping[str, Any]) -> str:
    """Whether the row's 95% Wilson interval excludes a tie, in words."""
    if not is_number(row.get("win_rate")):
        return "no valid verdicts"
    interval = row_ci(row)
    if interval is None:
        return "no confidence interval"
    lo, hi = interval
    if lo > 0.5:
        return f"DPO beats {row['baseline']}"
    if hi < 0.5:
        return f"{row['baseline']} beats DPO"
    return "not distinguishable from a tie"


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


def headline_rows(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The rows at the configured headline temperature (evaluate.headline_temperature), per baseline."""
    return [r for r in rows if r.get("headline")]


def shown_name(row: Mapping[str, Any], key: str) -> str:
    """row[key] (a baseline's or a frontier policy's name) as tables show it: best-of-N picked by the
    evaluation's own reward is marked an oracle."""
    return row[key] + (" (oracle)" if row.get("oracle") else "")


def lc_cell(row: Mapping[str, Any]) -> str:
    """The LC win rate, or why there is none (alignpipe.length_control's rule)."""
    if is_number(row.get("lc_win_rate")):
        return fmt(row["lc_win_rate"]) + (f" ({row['lc_note']})" if row.get("lc_note") else "")
    return f"none ({row['lc_note']})" if row.get("lc_note") else "n/a"


def _win_rate_table(rows: Sequence[Mapping[str, Any]], extra: Sequence[tuple[str, Any]] = ()) -> list[str]:
    """One line per (baseline, temperature): every statistic the evaluation measured for it."""
    if any(is_number(r.get("reward_diff")) for r in rows):
        extra = [("reward DPO - baseline (95% CI)", lambda r: f"{fmt(r.get('reward_diff'))} {fmt_ci(r, 'reward_diff_')}"), *extra]
    header = ["baseline", "T", "win rate", "95% CI (Wilson)", "LC win rate", "LC 95% CI", "length DPO", "length baseline",
              "order disagreement", "first shown wins", "valid", "invalid", "verdict"] + [name for name, _ in extra]
    body = []
    for r in sorted(rows, key=lambda r: (r["baseline"], r["temperature"])):
        line = [shown_name(r, "baseline") + (" **(headline)**" if r.get("headline") else ""), fmt(r["temperature"], 2), fmt(r["win_rate"]),
                fmt_ci(r), lc_cell(r), fmt_ci(r, "lc_"), fmt(r.get("mean_length_policy"), 1),
                fmt(r.get("mean_length_baseline"), 1), fmt(r.get("order_disagreement")), fmt(r.get("first_wins_share")),
                r["n_valid"], r["n_invalid"], verdict(r)]  # fmt: skip
        body.append(line + [cell(r) for _, cell in extra])
    return table(header, body)


def _agreement_line(row: Optional[Mapping[str, Any]]) -> list[str]:
    if not row or not is_number(row.get("agreement")):
        return []
    order = ""
    if is_number(row.get("order_disagreement")):
        order = f"; its two orders disagreed on {fmt(row['order_disagreement'])} of the pairs, first shown won {fmt(row.get('first_wins_share'))}"
    return [
        f"**The judge against humans:** on {row['n']} human-labelled pairs ({row['source']}) the judge preferred the "
        f"human's choice {fmt(row['agreement'])} of the time, 95% CI {fmt_ci(row)} ({row.get('n_invalid', 0)} invalid{order}). "
        "This is measured on the dataset's human-labelled pairs, not on the DPO-vs-baseline pairs above: it says how "
        "often the judge sides with humans on this task's data (near 0.5: a coin flip there), not how often it is "
        "right about these policies' samples (the paper found GPT-4 agreeing with humans about as often as humans "
        "agree with each other).",
        "",
    ]


LC_BIAS_SENTENCE = "; a raw win rate well above its LC value means that judge is rewarding length"


def win_rate_section(rows: Sequence[WinRateRow], agreement: Optional[AgreementRow], out_dir: Path) -> Section:
    section = Section(
        "Win rate vs temperature (held-out prompts)",
        "each row is the share of held-out prompts where the judge preferred the DPO sample over the baseline's "
        "at that sampling temperature (ties and pairs the judge decided differently in the two orders count half). "
        "The 95% CI is a continuity-corrected Wilson score interval over prompts (it covers at least 95% at 16 to "
        "256 prompts, ties included, where the percentile bootstrap covered 81-84% at a 0.9 win rate); where it "
        "excludes 0.5 the difference is more than sampling noise. With several samples per prompt a prompt scores "
        "the mean of its comparisons, and intervals stay over prompts. The length-controlled (LC) win rate is "
        "AlpacaEval 2's: a logistic regression of an LLM judge's preference on the standardized length difference, "
        "read at zero difference" + LC_BIAS_SENTENCE + ". There is none (the reason is given) for a reward judge, "
        "whose reward is itself the effect, length included, and where zero length difference lies outside the "
        "observed differences (\"extreme length changes\", e.g. DPO longer on nearly every prompt), where the "
        "regression could only extrapolate. A reward judge's rows also give DPO's mean reward minus the "
        "baseline's, paired per prompt, with a t interval. Lengths are mean tokens per sample. Order "
        "disagreement and first-shown wins are the judge's position checks (n/a for a reward judge, which sees no "
        "order); first-shown wins far from 0.5 means position bias. The headline row is at the temperature the "
        "config fixes (`evaluate.headline_temperature`).",
    )
    if not rows:
        section.omitted = "no in-distribution win-rate results in this run."
        return section
    if not any(is_number(r.get("lc_win_rate")) and not r.get("lc_note") for r in rows):  # no fitted LC: no word on length bias
        section.how_to_read = section.how_to_read.replace(LC_BIAS_SENTENCE, "")
    if _valid(rows):
        section.figures.append(plots.win_rate_vs_temperature(rows, out_dir / FIGURES["win_rate"]))
    else:
        section.body += ["No comparison produced a valid verdict, so there is nothing to plot.", ""]
    if len({r["temperature"] for r in rows}) == 1:
        section.body += ["Only one temperature was evaluated, so each baseline's curve is a single point.", ""]
    section.body += _agreement_line(agreement)
    section.body += _win_rate_table(rows)
    return section


def data_section(evaluate: Mapping[str, Any], ood: Mapping[str, Any]) -> Section:
    section = Section(
        "Evaluation data",
        "where the evaluation prompts came from, and how many candidate prompts were removed because they also "
        "occur among the training prompts (the SFT examples and the DPO pairs, compared after normalizing case, "
        "Unicode and whitespace): every number above is measured on the prompts that remain.",
    )
    rows = [(name, d) for name, d in (("in distribution (evaluate)", evaluate), ("out of distribution (ood)", ood)) if d]
    if not rows:
        section.omitted = "the evaluation stages recorded no data provenance."
        return section
    section.body += table(
        ["evaluation", "prompts from", "candidates", "removed (also training prompts)", "evaluated"],
        ([name, d.get("eval_source", "n/a"), d.get("candidate_prompts", "n/a"), d.get("overlap_removed", "n/a"), d.get("prompts", "n/a")]
         for name, d in rows),
    )  # fmt: skip
    return section


def frontier_section(frontier: Sequence[FrontierRow], rewards: Sequence[RewardKLRow], out_dir: Path) -> Section:
    section = Section(
        "Reward vs KL frontier (T = 1)",
        "each point is one policy (the SFT model, the final DPO policy and, with `evaluate.checkpoints`, DPO's "
        "intermediate checkpoints), sampled at temperature 1: its mean reward against the mean sequence-level "
        "KL(policy || SFT) of its own samples, scored on the sampled token ids. Only T=1 samples come from the "
        "policy itself, so no other temperature has a KL. Further left is closer to the SFT model, higher is more "
        "reward; at equal KL the higher policy is the better trade-off (the paper's Figure 2). Bars are 95% "
        "Student t intervals over prompts. The KL is that of sequences capped at the evaluation's max_new_tokens: a "
        "sample cut at the cap is scored up to the cap only (the cap and the share cut there are in the table). "
        "A best-of-N point picked by the evaluation's own reward is an oracle baseline, placed at its analytic "
        "KL bound log N - (N-1)/N, not at a measured KL.",
    )
    if not frontier and not rewards:
        section.omitted = "no reward rows (the evaluation did not use a reward judge)."
        return section
    if frontier:
        section.figures.append(plots.reward_kl_frontier(frontier, out_dir / FIGURES["frontier"]))
        section.body += table(
            ["policy", "DPO step", "mean reward", "95% CI", "KL (nats/seq)", "KL 95% CI", "max_new_tokens", "cut at the cap", "prompts"],
            ([shown_name(r, "label"), fmt(r.get("dpo_step")), fmt(r["mean_reward"]), fmt_ci(r, "reward_"),
              fmt(r["kl"]) + (" (analytic bound)" if r.get("kl_is_bound") else ""), fmt_ci(r, "kl_"), fmt(r.get("max_new_tokens")),
              truncated_share(r), r["n"]]
             for r in frontier),
        )  # fmt: skip
        section.body += [""]
        oracle = [r for r in frontier if r.get("oracle")]
        if oracle:
            section.body += [
                f"{', '.join(shown_name(r, 'label') for r in oracle)}: the best of N SFT samples as picked by the evaluation's "
                "own reward, an *oracle* baseline (it optimizes the very score it is measured by), not a trained policy; "
                "its KL is the analytic bound log N - (N-1)/N, not measured.", "",
            ]
    else:
        section.body += ["KL was not measured (set `evaluate.compute_kl: true`), so there is no frontier; the mean rewards are below.", ""]
    if rewards:
        section.body += ["Mean reward of each policy's samples, per temperature:", ""]
        section.body += table(
            ["policy", "temperature", "mean reward", "95% CI"],
            ([r["policy"], fmt(r["temperature"], 2), fmt(r["mean_reward"]), fmt_ci(r, "reward_")]
             for r in sorted(rewards, key=lambda r: (r["policy"], r["temperature"]))),
        )  # fmt: skip
    return section


def truncated_share(row: Mapping[str, Any]) -> str:
    """How many of a frontier policy's T=1 samples were cut at max_new_tokens (their KL is capped there)."""
    if not is_number(row.get("truncated")) or not row.get("n"):
        return "n/a"
    return f"{int(row['truncated'])}/{row['n']} ({fmt(row['truncated'] / row['n'], 2)})"


def paper_comparable(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The OOD rows measured as the paper's Table 1 was (the evaluate stage marks them with paper_*)."""
    return [r for r in rows if "paper_dpo" in r]


def ood_section(rows: Sequence[OODRow], description: str, out_dir: Path) -> Section:
    comparable = paper_comparable(rows)
    how = (
        f"what this measures: {description}. Each row is the share of articles where the judge preferred the DPO "
        "policy's text over the baseline's, with a continuity-corrected Wilson 95% CI over articles, as in the section above."
    )
    if comparable:
        how += (" Rows measured as the paper's Table 1 was (a summarization policy, an LLM judge with the news "
                "prompt, the reference highlights as baseline) carry the paper's numbers beside them; absolute "
                "heights depend on model size and judge (the paper's gpt-4-0314 is deprecated).")
    else:
        how += " These rows are not comparable with the paper's Table 1 (GPT-4, summaries vs reference highlights), which is therefore not shown."
    section = Section(f"Out of distribution: {description}", how)
    if not rows:
        section.omitted = "the OOD stage produced no results."
        return section
    if _valid(rows):
        section.figures.append(plots.ood_win_rates(rows, PAPER_TABLE1 if comparable else None, out_dir / FIGURES["ood"]))
    extra: list[tuple[str, Any]] = []
    if any(is_number(r.get("mean_reward")) for r in rows):
        extra.append(("mean reward DPO", lambda r: fmt(r.get("mean_reward"))))
    if comparable:
        extra += [(f"paper {m}", lambda r, m=m: fmt(r.get(f"paper_{m.lower()}"), 2)) for m in PAPER_TABLE1]
    section.body += _win_rate_table(rows, extra)
    if comparable:
        section.body += ["", "Paper (Rafailov et al. 2023, Table 1, gpt-4-0314 judge vs reference highlights):", ""]
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
        "computing it took when it was built (a later run with the same key reuses it for free). Their sum is "
        "not the wall time of any one run: this report is cached with the outputs it describes, so the run that "
        "printed it measures its own wall time (the CLI summary, MLflow's `pipeline_seconds`).",
    )
    section.body += table(
        ["", ""],
        [["preset", run.preset], ["model", f"`{run.model}`"], ["judge", run.judge or "n/a"],
         ["sum of stage compute times (stored)", fmt_seconds(run.total_seconds)]],
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


def _headline_line(r: Mapping[str, Any], where: str) -> str:
    lengths = ""
    if is_number(r.get("mean_length_policy")):
        lengths = f"; mean length DPO {fmt(r['mean_length_policy'], 1)} vs {fmt(r.get('mean_length_baseline'), 1)} tokens"
    k = r.get("samples_per_prompt") or 1
    per = f" ({k} samples each)" if k > 1 else ""
    if is_number(r.get("lc_win_rate")):
        lc = f"Length-controlled win rate {fmt(r['lc_win_rate'])} {fmt_ci(r, 'lc_')}" + (f" ({r['lc_note']})" if r.get("lc_note") else "")
    else:
        lc = f"No length-controlled win rate: {r.get('lc_note') or 'not measured'}"
    reward = ""
    if is_number(r.get("reward_diff")):
        reward = (f" Mean reward DPO minus {r['baseline']}, paired per prompt: {fmt(r['reward_diff'])}, "
                  f"95% CI {fmt_ci(r, 'reward_diff_')}.")
    return (
        f"- **{where}, DPO vs {shown_name(r, 'baseline')} at T={r['temperature']:g} (fixed by the config): win rate {fmt(r['win_rate'])}, "
        f"95% CI {fmt_ci(r)} over {r['n_valid']} prompts{per}: {verdict(r)}.**{reward} {lc}{lengths}."
    )


def headline(inputs: ReportInputs) -> list[str]:
    """The few lines a reader who stops after the title should take away."""
    lines = [_headline_line(r, "Held-out prompts") for r in headline_rows(inputs.win_rates)]
    if inputs.win_rates and not lines:
        lines.append("- No win-rate row is marked as the headline (evaluate.headline_temperature); see the table below.")
    agreement = inputs.judge_agreement
    if agreement and is_number(agreement.get("agreement")):
        lines.append(f"- The judge agreed with human labels {fmt(agreement['agreement'])} of the time, 95% CI {fmt_ci(agreement)}, "
                     f"on {agreement['n']} pairs ({agreement['source']}: human-labelled dataset pairs, not the evaluated samples).")
    if inputs.data:
        lines.append(f"- Evaluation prompts: {inputs.data.get('eval_source', 'n/a')}; {inputs.data.get('overlap_removed', 0)} of "
                     f"{inputs.data.get('candidate_prompts', 'n/a')} candidates also occur among the training prompts and were removed.")
    for r in headline_rows(inputs.ood):
        line = _headline_line(r, f"Out of distribution ({inputs.ood_description})")
        if "paper_dpo" in r:
            line += " Paper (Table 1): " + ", ".join(f"{m} {r[f'paper_{m.lower()}']:.2f}" for m in PAPER_TABLE1 if f"paper_{m.lower()}" in r) + "."
        lines.append(line)
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
        win_rate_section(inputs.win_rates, inputs.judge_agreement, out_dir),
        data_section(inputs.data, inputs.ood_data),
        frontier_section(inputs.frontier, inputs.reward_kl, out_dir),
        ood_section(inputs.ood, inputs.ood_description, out_dir),
        training_section(inputs, out_dir),
        run_section(inputs.run),
    ]
    lines = [f"# alignpipe report: {inputs.run.preset}", "", "## Headline", ""] + headline(inputs) + [""]
    for section in sections:
        lines += section.markdown()
    report = out_dir / REPORT_FILE
    report.write_text("\n".join(lines).rstrip() + "\n")
    return [fig for s in sections for fig in s.figures] + [report]
