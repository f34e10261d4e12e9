"""Bad input: one line naming the culprit, exit 2, no traceback, and nothing computed first.

Each case runs the real `alignpipe` command line (the real stages, not doubles) against a tiny
model and a data dir; the store must hold no stage output afterwards, so nothing was trained
before the error was found.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from alignpipe.cli import app
from tiny_pipeline import tiny_pipeline_config

GOOD_REVIEW = {"text": "A fine film with a moving score.", "label": 1}


@pytest.fixture
def setup(tmp_path, tiny_model_dir, shared_data):
    data = tmp_path / "data"
    data.mkdir()
    (data / "imdb.jsonl").write_text("".join(json.dumps({**GOOD_REVIEW, "text": f"Review {i}: {GOOD_REVIEW['text']}"}) + "\n" for i in range(40)))
    (data / "cnn_dailymail.jsonl").write_text((shared_data / "cnn_dailymail.jsonl").read_text())
    config = tiny_pipeline_config(tmp_path, tiny_model_dir, data={"dir": str(data), "builtin_fallback": False})
    return tmp_path, data, config


def _outputs(run_dir: Path) -> list[Path]:
    store = run_dir / "store"
    return [p for p in store.glob("*/*") if p.is_dir() and not p.name.startswith(".")] if store.exists() else []


def _one_line(result, *needles: str) -> str:
    output = result.output
    assert result.exit_code == 2, output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output
    assert "Traceback" not in output, output
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def invoke(*args) -> object:
    return CliRunner(env={"COLUMNS": "300"}).invoke(app, [str(a) for a in args])


def _write_imdb(data: Path, lines: list[str]) -> None:
    (data / "imdb.jsonl").write_text("".join(line + "\n" for line in lines))


GOOD = json.dumps(GOOD_REVIEW)


@pytest.mark.parametrize(
    "lines, needles",
    [
        ([GOOD, '{"text": "broken", "label": 1', GOOD], ["imdb.jsonl:2: invalid JSON"]),
        ([GOOD, GOOD, json.dumps({"label": 1})], ["imdb.jsonl:3: field 'text' is missing"]),
        ([GOOD, json.dumps({"text": "ok", "label": "positive"})], ["imdb.jsonl:2: field 'label' must be an integer, got str"]),
        ([json.dumps({"text": 7, "label": 1})], ["imdb.jsonl:1: field 'text' must be a string, got int"]),
        ([], ["imdb.jsonl: no records"]),
    ],
    ids=["bad-json", "missing-field", "wrong-type-label", "wrong-type-text", "empty-file"],
)
def test_bad_data_fails_in_the_plan_before_any_model_loads(setup, lines, needles):
    tmp_path, data, config = setup
    _write_imdb(data, lines)
    for command in (["run"], ["stage", "dpo"]):
        line = _one_line(invoke(*command, "--config", config), *needles)
        assert str(data / "imdb.jsonl") in line  # the file, by its path
    assert _outputs(tmp_path / "run") == []


def test_too_few_examples_names_the_data_and_the_batch_size(setup):
    tmp_path, data, config = setup
    _write_imdb(data, [json.dumps({**GOOD_REVIEW, "text": f"Review {i}"}) for i in range(6)])
    _one_line(invoke("run", "--config", config), f"data.dir {data}", "fewer than sft.batch_size 8")
    assert _outputs(tmp_path / "run") == []


@pytest.mark.parametrize(
    "args, needles",
    [
        (["run", "--set", "dpo.betaa=0.1"], ["dpo.betaa", "unknown key"]),
        (["run", "--set", "dpo.beta=-0.1"], ["dpo.beta", "greater than 0"]),
        (["run", "--set", "evaluate.temperatures=[-1]"], ["evaluate.temperatures.0", "greater than or equal to 0"]),
        (["run", "--set", "evaluate.generation.temperature=0.5"], ["evaluate.generation.temperature", "unknown key"]),
        (["run", "--set", "dpo.loss_type=cdpo"], ["dpo", "cdpo", "label_smoothing"]),
        (["run", "--set", "model.name_or_path=/no/such/model"], ["model.name_or_path: /no/such/model: no such directory"]),
        (["run", "--rerun", "dop"], ["--rerun dop", "unknown stage"]),
        (["stage", "bogus"], ["stage bogus", "unknown stage"]),
        (["schedule", "--cron", "every night"], ["--cron 'every night'", "not a valid cron"]),
        (["run", "--set", "orchestration.retries={evaluat: 2}"], ["orchestration.retries", "evaluat"]),
        (["run", "--set", "evaluate.judge.backend=openai", "--set", "evaluate.compute_kl=false"], ["evaluate.judge", "OPENAI_API_KEY"]),
        (["run", "--set", "ood.judge.backend=local", "--set", "ood.judge.local_model=/no/judge"], ["ood.judge.local_model", "/no/judge"]),
    ],
    ids=["unknown-key", "negative-beta", "negative-temperature", "removed-setting", "cdpo-no-smoothing",
         "missing-model-path", "unknown-rerun", "unknown-stage", "bad-cron", "retries-unknown-stage",
         "judge-without-key", "missing-judge-model"],  # fmt: skip
)
def test_bad_settings_and_options(setup, args, needles, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    tmp_path, _, config = setup
    _one_line(invoke(*args, "--config", config), *needles)
    assert _outputs(tmp_path / "run") == []


def test_unknown_preset_and_yaml_syntax_error(tmp_path):
    _one_line(invoke("run", "--preset", "no-such-preset"), "--preset no-such-preset", "unknown preset (choose from")
    broken = tmp_path / "broken.yaml"
    broken.write_text("dpo:\n  beta: [0.1\n")
    _one_line(invoke("run", "--config", broken), str(broken), "not valid YAML")
    parent = tmp_path / "parent.yaml"
    parent.write_text(yaml.safe_dump({"extends": "nope"}))
    _one_line(invoke("run", "--config", parent), "extends: unknown preset 'nope'")


def test_a_real_process_exits_2_with_one_line_on_stderr(setup):
    """Outside CliRunner: the installed entry point, real exit status, nothing on stdout."""
    tmp_path, data, config = setup
    _write_imdb(data, [GOOD, "not json"])
    out = subprocess.run([sys.executable, "-m", "alignpipe.cli", "run", "--config", str(config)],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip() == f"Error: {data / 'imdb.jsonl'}:2: invalid JSON (Expecting value at column 1)"
    assert out.stdout == ""
    assert _outputs(tmp_path / "run") == []
