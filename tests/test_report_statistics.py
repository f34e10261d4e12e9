"""The report and the CLI summary say which interval and which LC rule they used: the Wilson interval
is named, a missing LC win rate comes with its reason, a reward judge gets the paired reward
difference instead and is never said to reward length."""
from alignpipe.evaluation import REWARD_JUDGE_LC_NOTE
from alignpipe.report import ReportInputs, RunInfo, write_report


def _row(t, baseline="sft", **extra):
    return {"temperature": t, "baseline": baseline, "win_rate": 0.62, "stderr": 0.04, "n_valid": 128, "n_invalid": 0,
            "headline": t == 1.0, "ci_low": 0.53, "ci_high": 0.70, "mean_length_policy": 24.0, "mean_length_baseline": 23.5,
            "order_disagreement": None, "first_wins_share": None, **extra}  # fmt: skip


def _report(tmp_path, rows) -> str:
    write_report(tmp_path, ReportInputs(run=RunInfo(preset="demo", model="tiny"), win_rates=rows))
    return (tmp_path / "report.md").read_text()


def test_a_reward_judges_report_has_the_reward_difference_and_no_lc(tmp_path):
    rows = [_row(t, lc_win_rate=None, lc_ci_low=None, lc_ci_high=None, lc_note=REWARD_JUDGE_LC_NOTE, samples_per_prompt=4,
                 reward_diff=0.12, reward_diff_ci_low=0.05, reward_diff_ci_high=0.19) for t in (0.7, 1.0)]
    md = _report(tmp_path, rows)
    assert "| 95% CI (Wilson) |" in md and "continuity-corrected Wilson score interval" in md
    assert f"none ({REWARD_JUDGE_LC_NOTE})" in md and f"No length-controlled win rate: {REWARD_JUDGE_LC_NOTE}" in md
    assert "rewarding length" not in md  # that reading belongs to a judge's LC, and there is none
    assert "| reward DPO - baseline (95% CI) |" in md and "| 0.120 [0.050, 0.190] |" in md
    assert "over 128 prompts (4 samples each): DPO beats sft.** Mean reward DPO minus sft, paired per prompt: 0.120, 95% CI [0.050, 0.190]." in md


def test_an_llm_judges_report_gives_lc_or_the_reason_there_is_none(tmp_path):
    fitted = _row(0.0, lc_win_rate=0.58, lc_ci_low=0.49, lc_ci_high=0.67, lc_note=None)
    extreme = _row(1.0, lc_win_rate=None, lc_ci_low=None, lc_ci_high=None,
                   lc_note="extreme length changes: the policy is longer on 97% of prompts, so equal length lies outside the observed differences")
    md = _report(tmp_path, [fitted, extreme])
    assert "| 0.580 | [0.490, 0.670] |" in md and "rewarding length" in md
    assert "none (extreme length changes: the policy is longer on 97% of prompts" in md
    assert "No length-controlled win rate: extreme length changes" in md and "reward DPO - baseline" not in md


def test_the_cli_summary_gives_the_interval_and_the_reward_difference():
    from rich.console import Console

    from alignpipe.cli import _results_table

    metrics = {"win_rate/sft/t1": 0.62, "win_rate/sft/t1/stderr": 0.04, "win_rate/sft/t1/ci_low": 0.53, "win_rate/sft/t1/ci_high": 0.7,
               "win_rate/sft/t1/reward_diff": 0.12, "win_rate/sft/t1/reward_diff_ci_low": 0.05, "win_rate/sft/t1/reward_diff_ci_high": 0.19}
    console = Console(width=160, record=True)
    console.print(_results_table("evaluate", metrics))
    text = console.export_text()
    assert "0.62 ± 0.04 [0.53, 0.70]" in text and "0.120 [0.050, 0.190]" in text
