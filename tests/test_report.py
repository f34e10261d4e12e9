"""The report from small synthetic stage outputs: files, valid images, numbers, missing sections, and
what makes its numbers defensible: the headline at the configured temperature with its CI, no KL
at T != 1, Table 1 only beside comparable rows, the overlap count, both-order statistics, LC win rates."""
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from alignpipe.report import (
    FIGURES,
    PAPER_TABLE1,
    REPORT_FILE,
    ReportInputs,
    RunInfo,
    loss_at_start,
    read_history,
    write_report,
)

TEMPS = [0.0, 0.25, 0.5, 1.0]


def dpo_history(n: int = 40) -> list[dict]:
    rows = []
    for step in range(1, n + 1):
        margin = 0.05 * step + 0.1 * math.sin(step)
        rows.append({
            "step": step,
            "loss": math.log(1 + math.exp(-margin)),
            "rewards/chosen": margin / 2,
            "rewards/rejected": -margin / 2,
            "rewards/margins": margin,
            "rewards/accuracies": min(1.0, 0.5 + 0.01 * step),
            "lr": 1e-6,
            "grad_norm": 1.0 / step,
            "tokens_per_s": 1000.0,
            "seconds_per_step": 0.5,
            "peak_memory_mb": 812.0,
        })
    return rows


def sft_history(n: int = 12) -> list[dict]:
    rows = [{"step": s, "loss": 3.0 / s ** 0.3, "lr": 1e-5} for s in range(1, n + 1)]
    rows[-1]["eval_loss"] = 2.5  # logged once, at the end (the training loop's spelling)
    return rows


def run_info() -> RunInfo:
    return RunInfo(
        preset="demo",
        model="HuggingFaceTB/SmolLM2-135M-Instruct",
        hyperparameters={"beta": 0.1, "lr": 1e-6, "loss_type": "sigmoid", "batch_size": 64},
        stages=[
            {"name": "sft", "key": "a1b2c3d4e5f6a7b8", "built": "2026-11-21T18:00:00+00:00", "seconds": 41.5},
            {"name": "dpo", "key": "0f9e8d7c6b5a4321", "built": "2026-11-21T18:20:00+00:00", "seconds": 754.0},
        ],
        judge="reward:vader",
        total_seconds=812.5,
    )


def win_row(t, baseline, wr, *, headline=False, lo=None, hi=None, lc=None, n_valid=250, n_invalid=6, **extra) -> dict:
    lo = wr - 0.03 if lo is None else lo
    hi = wr + 0.06 if hi is None else hi
    lc = wr - 0.02 if lc is None else lc
    return {"temperature": t, "baseline": baseline, "win_rate": wr, "stderr": 0.031, "n_valid": n_valid, "n_invalid": n_invalid,
            "headline": headline, "ci_low": lo, "ci_high": hi, "lc_win_rate": lc, "lc_ci_low": lc - 0.07, "lc_ci_high": lc + 0.07,
            "mean_length_policy": 41.5, "mean_length_baseline": 35.25, "order_disagreement": 0.125, "first_wins_share": 0.5625,
            **extra}  # fmt: skip


def frontier_rows() -> list[dict]:
    return [
        {"label": "sft", "policy": "sft", "dpo_step": 0, "temperature": 1.0, "mean_reward": 0.31, "reward_ci_low": 0.2,
         "reward_ci_high": 0.42, "kl": 0.0, "kl_ci_low": 0.0, "kl_ci_high": 0.0, "n": 256},
        {"label": "dpo@step100", "policy": "dpo", "dpo_step": 100, "temperature": 1.0, "mean_reward": 0.55, "reward_ci_low": 0.45,
         "reward_ci_high": 0.65, "kl": 2.5, "kl_ci_low": 2.1, "kl_ci_high": 2.9, "n": 256},
        {"label": "dpo", "policy": "dpo", "dpo_step": 200, "temperature": 1.0, "mean_reward": 0.8, "reward_ci_low": 0.72,
         "reward_ci_high": 0.88, "kl": 8.0, "kl_ci_low": 7.0, "kl_ci_high": 9.0, "n": 256},
    ]


def full_inputs() -> ReportInputs:
    # T=0.25 has the best win rate, but the config fixes the headline at T=1.0
    win_rates = [win_row(t, "sft", 0.55 + 0.063 * (t == 0.25), headline=t == 1.0) for t in TEMPS]
    win_rates += [win_row(t, "reference_text", 0.42, lo=0.36, hi=0.48, headline=t == 1.0, n_valid=256, n_invalid=0) for t in TEMPS]
    reward_kl = [
        {"policy": p, "temperature": t, "mean_reward": r + 0.1 * t, "reward_stderr": 0.02, "reward_ci_low": r + 0.1 * t - 0.04,
         "reward_ci_high": r + 0.1 * t + 0.04, "kl": (8.0 if p == "dpo" else 0.0) if t == 1.0 else None}
        for p, r in (("dpo", 0.7), ("sft", 0.3)) for t in TEMPS
    ]  # fmt: skip
    ood = [win_row(0.0, "reference_text", 0.287, lo=0.232, hi=0.342, headline=True, n_valid=256, n_invalid=0, mean_reward=0.11,
                   paper_dpo=0.36, paper_ppo=0.26),
           win_row(0.25, "reference_text", 0.244, n_valid=255, n_invalid=1, mean_reward=0.09, paper_dpo=0.31, paper_ppo=0.23)]
    agreement = {"source": "tldr_comparisons.test.jsonl", "judge": "openai:gpt-4o", "n": 200, "n_invalid": 2, "agreement": 0.655,
                 "ci_low": 0.59, "ci_high": 0.72, "order_disagreement": 0.18, "first_wins_share": 0.53}
    return ReportInputs(run=run_info(), sft_history=sft_history(), dpo_history=dpo_history(), win_rates=win_rates,
                        reward_kl=reward_kl, frontier=frontier_rows(), ood=ood, judge_agreement=agreement,
                        data={"eval_source": "test split (tldr.test.jsonl)", "candidate_prompts": 259, "overlap_removed": 3, "prompts": 256},
                        ood_data={"eval_source": "CNN/DailyMail 3.0.0 test articles", "candidate_prompts": 256, "overlap_removed": 0, "prompts": 256},
                        ood_description="summaries of CNN/DailyMail test articles judged by openai:gpt-4o (news prompt) against the reference highlights")  # fmt: skip


def embedded_images(markdown: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)


def assert_real_png(path: Path) -> None:
    assert path.stat().st_size > 10_000, f"{path.name} is suspiciously small"
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.width >= 500 and im.height >= 300
        # A blank canvas has one colour; a plot with axes, text and lines has many.
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 20)) > 50


def test_full_report_writes_plots_and_markdown_with_the_numbers(tmp_path):
    files = write_report(tmp_path / "report", full_inputs())
    out = tmp_path / "report"

    assert {f.name for f in files} == set(FIGURES.values()) | {REPORT_FILE}
    for f in files:
        assert f.parent == out and f.exists()
    for name in FIGURES.values():
        assert_real_png(out / name)

    md = (out / REPORT_FILE).read_text()
    assert sorted(embedded_images(md)) == sorted(FIGURES.values())  # embedded by relative path
    first_section = md.split("\n## ")[1]
    assert first_section.startswith("Headline")
    # The headline reports the configured temperature, with its CI, not the best of several.
    assert "DPO vs sft at T=1 (fixed by the config): win rate 0.550, 95% CI [0.520, 0.610] over 250 prompts: DPO beats sft." in first_section
    assert "0.613" not in first_section
    assert "DPO vs reference_text at T=1 (fixed by the config): win rate 0.420, 95% CI [0.360, 0.480] over 256 prompts: reference_text beats DPO." in first_section
    assert "Length-controlled win rate 0.530 [0.460, 0.600]; mean length DPO 41.5 vs 35.2 tokens" in first_section
    assert "3 of 259 candidates also occur among the training prompts and were removed" in first_section
    assert "The judge agreed with human labels 0.655 of the time, 95% CI [0.590, 0.720], on 200 pairs" in first_section
    assert "win rate 0.287, 95% CI [0.232, 0.342]" in first_section and "Paper (Table 1): DPO 0.36, PPO 0.26." in first_section
    # Every win-rate row: raw and LC win rate with CIs, lengths, both-order statistics, counts, verdict.
    assert ("| sft | 0.25 | 0.613 | [0.583, 0.673] | 0.593 | [0.523, 0.663] | 41.5 | 35.2 | 0.125 | 0.562 | 250 | 6 | DPO beats sft |"
            in md)
    assert "| sft **(headline)** | 1.00 | 0.550 |" in md
    assert "on 200 human-labelled pairs (tldr_comparisons.test.jsonl) the judge preferred the human's choice 0.655" in md
    # Held-out data: source and the overlap count, in and out of distribution.
    assert "| in distribution (evaluate) | test split (tldr.test.jsonl) | 259 | 3 | 256 |" in md
    # Frontier: one row per policy at T=1 with CIs; the per-temperature reward table has no KL column.
    assert "| dpo@step100 | 100 | 0.550 | [0.450, 0.650] | 2.500 | [2.100, 2.900] | n/a | n/a | 256 |" in md  # no cap recorded: n/a
    reward_table = md.split("Mean reward of each policy's samples, per temperature:")[1].split("\n## ")[0]
    assert "KL" not in reward_table and "| dpo | 0.50 | 0.750 | [0.710, 0.790] |" in reward_table
    # The comparable OOD rows sit beside the paper's Table 1.
    assert "| reference_text **(headline)** | 0.00 | 0.287 | [0.232, 0.342] |" in md and "| 0.110 | 0.36 | 0.26 |" in md
    assert "Paper (Rafailov et al. 2023, Table 1" in md
    assert md.count("*How to read this:*") == 6
    assert "Omitted" not in md
    assert "`0f9e8d7c6b5a`" in md and "13 min 32 s" in md  # stage key and total time
    assert "| rewards/accuracies | 0.51 | 0.885 |" in md
    assert "| peak_memory_mb | 812 | 812 |" in md
    assert "| eval_loss | 2.5 | 2.5 |" in md


def test_table1_is_shown_only_beside_comparable_rows(tmp_path):
    """A sentiment score of news continuations against SFT is not the paper's Table 1: no paper numbers,
    a title that says what was measured."""
    inputs = full_inputs()
    inputs.ood = [win_row(0.0, "sft", 0.62, lo=0.44, hi=0.81, headline=True, n_valid=16, n_invalid=0, mean_reward=0.2)]
    inputs.ood_description = "sentiment (reward:vader) of continuations of CNN/DailyMail test-article openings, against the SFT model's"
    write_report(tmp_path, inputs)
    md = (tmp_path / REPORT_FILE).read_text()
    ood = md.split("## Out of distribution: ")[1].split("\n## ")[0]
    assert ood.startswith("sentiment (reward:vader) of continuations of CNN/DailyMail")
    assert "not comparable with the paper's Table 1" in ood
    for needle in ("paper DPO", "paper PPO", "Paper (Rafailov", "Paper (Table 1)", "| 0.36 |", "| 0.31 |", "| 0.26 |"):
        assert needle not in md
    assert "| sft **(headline)** | 0.00 | 0.620 | [0.440, 0.810] |" in ood
    assert "Out of distribution (sentiment (reward:vader) of continuations" in md.split("\n## ")[1]


def test_a_kl_at_another_temperature_than_1_is_refused(tmp_path):
    inputs = full_inputs()
    inputs.reward_kl[0]["kl"] = 3.0  # dpo at T=0.0
    with pytest.raises(ValueError, match=r"reward_kl row 0: a KL at T=0; it is a KL of the policy only for T=1 samples"):
        write_report(tmp_path, inputs)


def test_the_frontier_plot_takes_rows_from_any_number_of_policies(tmp_path):
    """What a sweep report calls: members' frontier rows, each tagged with its series."""
    from alignpipe.plots import reward_kl_frontier

    rows = [{**r, "series": f"beta={beta}", "mean_reward": r["mean_reward"] + beta, "kl": r["kl"] / beta}
            for beta in (0.1, 0.5) for r in frontier_rows()]
    assert_real_png(reward_kl_frontier(rows, tmp_path / "sweep_frontier.png", title="sweep"))


def test_missing_sections_are_omitted_with_a_note(tmp_path):
    inputs = full_inputs()
    inputs.win_rates = [r for r in inputs.win_rates if r["temperature"] == 0.5 and r["baseline"] == "sft"]
    inputs.reward_kl = []
    inputs.frontier = []
    inputs.ood = []
    inputs.sft_history = []

    files = write_report(tmp_path, inputs)

    names = {f.name for f in files}
    assert names == {FIGURES["win_rate"], FIGURES["dpo_training"], REPORT_FILE}
    assert not (tmp_path / FIGURES["frontier"]).exists() and not (tmp_path / FIGURES["ood"]).exists()
    md = (tmp_path / REPORT_FILE).read_text()
    assert "> Omitted: no reward rows" in md
    assert "> Omitted: the OOD stage produced no results" in md
    assert "Only one temperature was evaluated" in md
    assert "No win-rate row is marked as the headline" in md
    assert "SFT history: none recorded." in md
    assert all((tmp_path / img).exists() for img in embedded_images(md))  # no broken links
    assert "0.36" not in md  # the paper's numbers belong to the omitted OOD section


def test_rewards_without_kl_keep_the_table_but_skip_the_frontier(tmp_path):
    inputs = full_inputs()
    inputs.frontier = []
    for row in inputs.reward_kl:
        row["kl"] = None
    files = write_report(tmp_path, inputs)
    assert FIGURES["frontier"] not in {f.name for f in files}
    md = (tmp_path / REPORT_FILE).read_text()
    assert "KL was not measured" in md
    assert "| dpo | 0.00 | 0.700 | [0.660, 0.740] |" in md


def test_run_info_alone_gives_a_report_that_says_nothing_was_evaluated(tmp_path):
    files = write_report(tmp_path, ReportInputs(run=RunInfo(preset="tiny", model="tiny-llama")))
    assert [f.name for f in files] == [REPORT_FILE]
    md = files[0].read_text()
    assert "No evaluation results in this run" in md
    assert md.count("> Omitted:") == 5
    assert "| preset | tiny |" in md


def test_win_rates_without_valid_verdicts_are_tabled_not_plotted(tmp_path):
    inputs = ReportInputs(run=run_info(), win_rates=[
        {"temperature": 0.0, "baseline": "sft", "win_rate": None, "stderr": None, "n_valid": 0, "n_invalid": 8}
    ])
    files = write_report(tmp_path, inputs)
    assert FIGURES["win_rate"] not in {f.name for f in files}
    md = (tmp_path / REPORT_FILE).read_text()
    assert "| sft | 0.00 | n/a | n/a | n/a | n/a | n/a | n/a | n/a | n/a | 0 | 8 | no valid verdicts |" in md


def test_a_malformed_row_fails_naming_its_section(tmp_path):
    inputs = full_inputs()
    del inputs.ood[0]["stderr"]
    with pytest.raises(ValueError, match=r"ood row 0 lacks stderr"):
        write_report(tmp_path, inputs)


def test_read_history_skips_blank_lines_and_tolerates_a_missing_file(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_text(json.dumps({"step": 1, "loss": 0.69}) + "\n\n" + json.dumps({"step": 2, "loss": 0.6}) + "\n")
    assert read_history(path) == [{"step": 1, "loss": 0.69}, {"step": 2, "loss": 0.6}]
    assert read_history(tmp_path / "absent.jsonl") == []


@pytest.mark.parametrize(
    "hparams, expected",
    [({}, math.log(2)), ({"loss_type": "cdpo"}, math.log(2)), ({"loss_type": "hinge"}, 1.0),
     ({"loss_type": "ipo", "beta": 0.1}, 25.0), ({"loss_type": "sigmoid", "sft_weight": 0.5}, None)],
)
def test_loss_at_start_matches_each_loss_at_zero_margin(hparams, expected):
    got = loss_at_start(hparams)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


def test_paper_table1_holds_the_published_numbers():
    assert PAPER_TABLE1 == {"DPO": {0.0: 0.36, 0.25: 0.31}, "PPO": {0.0: 0.26, 0.25: 0.23}}


def test_report_uses_neither_pyplot_nor_prefect_nor_mlflow(tmp_path):
    """Plots render headless without selecting a global backend; the core stays orchestration-free."""
    code = (
        "import sys\n"
        "from alignpipe.report import ReportInputs, RunInfo, write_report\n"
        "rows = [{'temperature': 0.0, 'baseline': 'sft', 'win_rate': 0.6, 'stderr': 0.05, 'n_valid': 9, 'n_invalid': 0}]\n"
        f"write_report({str(tmp_path)!r}, ReportInputs(run=RunInfo(preset='p', model='m'), win_rates=rows))\n"
        "loaded = [m for m in ('matplotlib.pyplot', 'prefect', 'mlflow') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MPLBACKEND")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / FIGURES["win_rate"]).exists()
