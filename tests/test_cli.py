"""The `alignpipe` CLI: exit codes and messages for bad input, single stages, the MLflow views."""
from __future__ import annotations

import re

import pytest
import yaml
from typer.testing import CliRunner

from alignpipe.cli import app
from pipeline_config import loading
from stage_doubles import calls, tiny_config, use_doubles


@pytest.fixture
def doubles(monkeypatch):
    use_doubles(monkeypatch)


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"preset": "clitest", "run_dir": str(tmp_path / "run")}))
    return path


def invoke(*args):
    # Wide enough that tables don't wrap the cells the tests look for.
    return CliRunner(env={"COLUMNS": "250"}).invoke(app, [str(a) for a in args])


def _one_line_error(result, code: int, *needles: str) -> str:
    assert result.exit_code == code, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    for needle in needles:
        assert needle in errors[0]
    assert "Traceback" not in result.output
    return errors[0]


@pytest.mark.parametrize("command", ["run", "stage dpo", "ui", "runs"])
def test_bad_set_key_names_the_path(command, config):
    result = invoke(*command.split(), "--config", config, "--set", "dpo.betaa=0.5")
    _one_line_error(result, 2, "dpo.betaa", "unknown key")


def test_bad_option_values_exit_2_naming_the_option(config):
    _one_line_error(invoke("run", "--config", config, "--set", "dpo.beta"), 2, "--set dpo.beta", "KEY=VALUE")
    _one_line_error(invoke("run", "--config", config, "--set", "dpo.beta=-1"), 2, "dpo.beta")
    _one_line_error(invoke("run", "--config", config, "--rerun", "dop"), 2, "--rerun dop", "unknown stage")
    _one_line_error(invoke("run", "--preset", "no-such-preset"), 2, "--preset no-such-preset", "unknown preset")
    _one_line_error(invoke("run", "--config", config.parent / "missing.yaml"), 2, "missing.yaml", "not found")
    _one_line_error(invoke("stage", "bogus", "--config", config), 2, "stage bogus", "unknown stage")
    _one_line_error(invoke("schedule", "--cron", "every night", "--config", config), 2, "--cron 'every night'")
    _one_line_error(invoke("schedule", "--config", config), 2, "--cron / --interval", "exactly one")
    _one_line_error(invoke("schedule", "--interval", "0", "--config", config), 2, "--interval 0", "positive")
    assert invoke("run", "--bogus").exit_code == 2  # click's own usage error


def test_presets_lists_names_with_descriptions(tmp_path, monkeypatch):
    (tmp_path / "demo.yaml").write_text("# Tiny offline demo on CPU.\nrun_dir: runs\n")
    (tmp_path / "paper.yaml").write_text("# The paper's IMDb setup.\nextends: demo\n")
    monkeypatch.setattr(loading, "PRESET_DIR", tmp_path)
    result = invoke("presets")
    assert result.exit_code == 0, result.output
    assert re.search(r"demo\s+│\s+Tiny offline demo on CPU\.", result.output)
    assert re.search(r"paper\s+│\s+The paper's IMDb setup\.", result.output)
    monkeypatch.setattr(loading, "PRESET_DIR", tmp_path / "empty")
    _one_line_error(invoke("presets"), 1, "no presets found")


def test_stage_runs_missing_upstream_then_reuses(config, doubles):
    cfg = tiny_config(config.parent / "run")
    first = invoke("stage", "dpo", "--config", config, "--no-track")
    assert first.exit_code == 0, first.output
    assert "ran: sft, pairs, reference, dpo" in first.output
    assert calls(cfg) == ["sft", "pairs", "reference", "dpo"]

    again = invoke("stage", "dpo", "--config", config, "--no-track")
    assert "ran: nothing (all cached)" in again.output
    forced = invoke("stage", "dpo", "--config", config, "--no-track", "--force")
    assert "ran: dpo" in forced.output
    assert calls(cfg) == ["sft", "pairs", "reference", "dpo", "dpo"]


def test_stage_on_a_box_without_mlflow_runs_untracked_and_says_so(config, doubles, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None if name == "mlflow" else real(name, *a, **k))
    result = invoke("stage", "sft", "--config", config)
    assert result.exit_code == 0, result.output
    assert "MLflow is not installed: running untracked (--no-track)" in result.output
    assert "mlflow:" not in result.output and "ran: sft" in result.output


def test_failing_stage_exits_1_in_one_line_naming_its_traceback_file(config, monkeypatch):
    use_doubles(monkeypatch, fail={"dpo"})
    result = invoke("stage", "dpo", "--config", config, "--no-track")
    line = _one_line_error(result, 1, "Error: stage 'dpo' failed: RuntimeError: dpo exploded on purpose (traceback: ")
    log_file = line.split("(traceback: ")[1].rstrip(")")
    assert "stage_doubles.py" in open(log_file).read()


def test_tracked_stage_shows_up_in_runs_and_compare(config, doubles):
    ran = invoke("stage", "evaluate", "--config", config)
    assert ran.exit_code == 0, ran.output
    assert "mlflow ui --backend-store-uri sqlite:///" in ran.output
    listed = invoke("runs", "--config", config, "--metric", "evaluate/win_rate")
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.output.splitlines() if "clitest-stage-evaluate" in line)
    assert "0.6" in row and "FINISHED" in row
    run_id = row.split("│")[1].strip()
    compared = invoke("compare", run_id, "--config", config, "--all-params")
    assert compared.exit_code == 0, compared.output
    assert re.search(r"evaluate/win_rate\s+│\s+0\.6", compared.output)
    assert re.search(r"dpo\.beta\s+│\s+0\.1", compared.output)
    _one_line_error(invoke("compare", "ffffffffffff", "--config", config), 2, "run id 'ffffffffffff'", "not found")


def test_ui_and_schedule_print_commands(config, doubles):
    ui = invoke("ui", "--config", config, "--port", "5055")
    assert ui.exit_code == 0, ui.output
    db = (config.parent / "run" / "mlflow.db").resolve()
    assert f"mlflow ui --backend-store-uri sqlite:///{db}" in ui.output and "--port 5055" in ui.output
    sched = invoke("schedule", "--cron", "0 3 * * *", "--config", config, "--work-pool", "gpu-pool", "--set", "dpo.beta=0.2")
    assert sched.exit_code == 0, sched.output
    assert "prefect deploy flows/pipeline.py:alignpipe_pipeline --name alignpipe-nightly --pool gpu-pool" in sched.output
    assert "--cron '0 3 * * *'" in sched.output and '"beta": 0.2' in sched.output


def test_results_table_lists_win_rate_reward_and_kl_per_temperature():
    from rich.console import Console

    from alignpipe.cli import _results_table

    metrics = {
        "win_rate/sft/t0.7": 0.7031, "win_rate/sft/t0.7/stderr": 0.0808, "win_rate/sft/t0.7/n_invalid": 0.0,
        "win_rate/sft/t1": 0.64, "win_rate/sft/t1/stderr": 0.085,
        "reward/dpo/t0.7": 0.634, "reward/sft/t0.7": 0.347, "kl/dpo/t0.7": 11.74, "judge/cost_usd": 0.0,
    }  # fmt: skip
    console = Console(width=120, record=True)
    console.print(_results_table("evaluate", metrics))
    text = console.export_text()
    assert "0.70 ± 0.08" in text and "0.634" in text and "0.347" in text and "11.740" in text
    assert text.index("0.7 ") < text.index("0.64 ± 0.09")  # temperatures in order
    assert _results_table("sft", {"train_loss": 1.0}) is None


def test_config_shows_each_value_its_source_and_the_stages_keyed_on_it(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"extends": "demo", "dpo": {"beta": 0.2}}))
    result = invoke("config", "--config", path, "--set", "evaluate.n_prompts=8")
    assert result.exit_code == 0, result.output
    rows = {cells[0]: cells[1:] for line in result.output.splitlines()
            if (cells := [c.strip() for c in line.split("│")[1:-1]]) and cells[0]}  # fmt: skip
    assert rows["dpo.beta"] == ["0.2", f"file {path}", "dpo"]
    assert rows["evaluate.n_prompts"] == ["8", "--set", "evaluate"]
    assert rows["sft.lr"] == ["0.0002", "preset demo", "sft"]
    assert rows["dpo.max_length"][2] == "reference, dpo"  # the reference pass tokenizes for DPO
    assert rows["model.chat_template"] == ["False", "default", "sft, pairs, reference, evaluate, ood"]
    assert rows["run_dir"][2].startswith("(not in any key")
    changed = invoke("config", "--config", path, "--changed")
    assert "dpo.beta" in changed.output and "dpo.label_smoothing" not in changed.output
