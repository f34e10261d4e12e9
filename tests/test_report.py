"""The report from small synthetic stage outputs: files, valid images, numbers, missing sections."""
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


def full_inputs() -> ReportInputs:
    win_rates = [
        {"temperature": t, "baseline": "sft", "win_rate": 0.55 + 0.063 * (t == 0.25), "stderr": 0.031,
         "n_valid": 250, "n_invalid": 6}
        for t in TEMPS
    ] + [
        {"temperature": t, "baseline": "reference_text", "win_rate": 0.42, "stderr": 0.03, "n_valid": 256, "n_invalid": 0}
        for t in TEMPS
    ]
    reward_kl = [
        {"policy": p, "temperature": t, "mean_reward": r + 0.1 * t, "reward_stderr": 0.02, "kl": k * (1 + t)}
        for p, r, k in (("dpo", 0.7, 4.0), ("sft", 0.3, 0.5))
        for t in TEMPS
    ]
    ood = [
        {"temperature": 0.0, "baseline": "reference_text", "win_rate": 0.287, "stderr": 0.028, "n_valid": 256,
         "mean_reward": 0.11},
        {"temperature": 0.25, "baseline": "reference_text", "win_rate": 0.244, "stderr": 0.027, "n_valid": 255,
         "mean_reward": 0.09},
    ]
    return ReportInputs(run=run_info(), sft_history=sft_history(), dpo_history=dpo_history(),
                        win_rates=win_rates, reward_kl=reward_kl, ood=ood)


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
    # The headline comes first and names the best in-distribution win rate with its stderr.
    first_section = md.split("\n## ")[1]
    assert first_section.startswith("Headline")
    assert "0.613 ± 0.031" in first_section and "temperature 0.25" in first_section
    assert "DPO preferred" in first_section
    assert "0.287 ± 0.028" in first_section  # OOD headline at T=0
    # Tables hold the numbers, including the paper's Table 1 for comparison.
    assert "| sft | 0.25 | 0.613 | 0.031 | [0.552, 0.674] | DPO preferred | 250 | 6 |" in md
    assert "| reference_text | 0.00 | 0.287 | 0.028 | [0.232, 0.342] | 256 | 0.110 | 0.36 | 0.26 |" in md
    for value in (0.36, 0.31, 0.26, 0.23):
        assert f"{value:.2f}" in md
    assert "| dpo | 1.00 | 0.800 | 0.020 | 8.000 |" in md
    assert md.count("*How to read this:*") == 5
    assert "Omitted" not in md
    assert "`0f9e8d7c6b5a`" in md and "13 min 32 s" in md  # stage key and total time
    # Training tables: first logged value, then the mean of the last 10% of steps.
    assert "| rewards/accuracies | 0.51 | 0.885 |" in md
    assert "| peak_memory_mb | 812 | 812 |" in md
    assert "| eval_loss | 2.5 | 2.5 |" in md


def test_missing_sections_are_omitted_with_a_note(tmp_path):
    inputs = full_inputs()
    inputs.win_rates = [r for r in inputs.win_rates if r["temperature"] == 0.5 and r["baseline"] == "sft"]
    inputs.reward_kl = []
    inputs.ood = []
    inputs.sft_history = []

    files = write_report(tmp_path, inputs)

    names = {f.name for f in files}
    assert names == {FIGURES["win_rate"], FIGURES["dpo_training"], REPORT_FILE}
    assert not (tmp_path / FIGURES["frontier"]).exists() and not (tmp_path / FIGURES["ood"]).exists()
    md = (tmp_path / REPORT_FILE).read_text()
    assert "> Omitted: no reward/KL rows" in md
    assert "> Omitted: the OOD stage produced no results" in md
    assert "Only one temperature was evaluated" in md
    assert "SFT history: none recorded." in md
    assert all((tmp_path / img).exists() for img in embedded_images(md))  # no broken links
    assert "0.36" not in md  # the paper's numbers belong to the omitted OOD section


def test_rewards_without_kl_keep_the_table_but_skip_the_frontier(tmp_path):
    inputs = full_inputs()
    for row in inputs.reward_kl:
        row["kl"] = None
    files = write_report(tmp_path, inputs)
    assert FIGURES["frontier"] not in {f.name for f in files}
    md = (tmp_path / REPORT_FILE).read_text()
    assert "KL was not measured" in md
    assert "| dpo | 0.00 | 0.700 | 0.020 | n/a |" in md


def test_run_info_alone_gives_a_report_that_says_nothing_was_evaluated(tmp_path):
    files = write_report(tmp_path, ReportInputs(run=RunInfo(preset="tiny", model="tiny-llama")))
    assert [f.name for f in files] == [REPORT_FILE]
    md = files[0].read_text()
    assert "No evaluation results in this run" in md
    assert md.count("> Omitted:") == 4
    assert "| preset | tiny |" in md


def test_win_rates_without_valid_verdicts_are_tabled_not_plotted(tmp_path):
    inputs = ReportInputs(run=run_info(), win_rates=[
        {"temperature": 0.0, "baseline": "sft", "win_rate": None, "stderr": None, "n_valid": 0, "n_invalid": 8}
    ])
    files = write_report(tmp_path, inputs)
    assert FIGURES["win_rate"] not in {f.name for f in files}
    md = (tmp_path / REPORT_FILE).read_text()
    assert "| sft | 0.00 | n/a | n/a | n/a | no valid verdicts | 0 | 8 |" in md


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
