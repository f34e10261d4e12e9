"""Sweeps: one pipeline per grid point, shared stages computed once, members concurrent, one
MLflow sweep run with the members nested, a sweep report; bad grids fail before anything runs."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from alignpipe.cli import app
from stage_doubles import calls, use_doubles
from tiny_pipeline import ALL_STAGES, tiny_pipeline_config

pytestmark = pytest.mark.slow


def invoke(*args):
    return CliRunner(env={"COLUMNS": "250"}).invoke(app, [str(a) for a in args])


def _outputs(run_dir: Path, stage: str) -> list[Path]:
    return list((run_dir / "store" / stage).glob("*/manifest.json"))


def test_a_beta_sweep_shares_upstream_stages_and_reports_across_members(tmp_path, tiny_model_dir, ephemeral_prefect):
    from mlflow.tracking import MlflowClient

    config = tiny_pipeline_config(tmp_path, tiny_model_dir)
    result = invoke("sweep", "--config", config, "--grid", "dpo.beta=0.1,0.5")
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "run"
    counts = {stage: len(_outputs(run_dir, stage)) for stage in ALL_STAGES}
    assert counts == {"sft": 1, "pairs": 1, "reference": 1, "dpo": 2, "evaluate": 2, "ood": 2, "report": 2}
    betas = sorted(json.loads(p.read_text())["config"]["dpo"]["beta"] for p in _outputs(run_dir, "dpo"))
    assert betas == [0.1, 0.5]

    report = Path(re.search(r"sweep report: (\S+)", result.output).group(1))
    text = report.read_text()
    assert "`dpo.beta=0.1`" in text and "`dpo.beta=0.5`" in text
    rows = {line.split("|")[1].strip(): line.split("|") for line in text.splitlines() if line.startswith("| `dpo.beta")}
    assert all(float(cells[-3]) >= 0 and float(cells[-2]) == float(cells[-2]) for cells in rows.values())  # KL, reward at T=1
    for figure in ("frontier.png", "win_rate_vs_grid.png", "training_curves.png"):
        assert (report.parent / figure).stat().st_size > 1000, figure

    mlflow = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = mlflow.get_experiment_by_name("alignpipe")
    (sweep,) = mlflow.search_runs([exp.experiment_id], filter_string="tags.`alignpipe.kind` = 'sweep'")
    assert sweep.info.status == "FINISHED" and sweep.data.metrics["members"] == 2
    assert {a.path for a in mlflow.list_artifacts(sweep.info.run_id)} >= {"sweep_report.md", "frontier.png"}
    members = mlflow.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{sweep.info.run_id}'")
    assert sorted(m.info.run_name for m in members) == ["dpo.beta=0.1", "dpo.beta=0.5"]
    for member in members:
        stages = mlflow.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{member.info.run_id}'")
        assert sorted(s.data.tags["stage"] for s in stages) == sorted(ALL_STAGES)
    cached = {m.info.run_name: m.data.tags["stages_executed"] for m in members}
    shared = [name for name in cached.values() if name.startswith("sft")]
    assert len(shared) == 1  # exactly one member computed sft, pairs and reference; the other reused them

    compared = invoke("compare", sweep.info.run_id[:12], "--config", config)
    assert compared.exit_code == 0, compared.output
    assert re.search(r"dpo\.beta\s+│\s+0\.1\s+│\s+0\.5", compared.output) or re.search(r"dpo\.beta\s+│\s+0\.5\s+│\s+0\.1", compared.output)

    again = invoke("sweep", "--config", config, "--grid", "dpo.beta=0.1,0.5")
    assert again.exit_code == 0, again.output
    latest = max(mlflow.search_runs([exp.experiment_id], filter_string="tags.`alignpipe.kind` = 'sweep'"), key=lambda r: r.info.start_time)
    rerun = mlflow.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{latest.info.run_id}'")
    assert [m.data.tags["stages_executed"] for m in rerun] == ["none", "none"]  # a rerun computes nothing
    assert {stage: len(_outputs(run_dir, stage)) for stage in ALL_STAGES} == counts


def test_members_run_concurrently(tmp_path, ephemeral_prefect, monkeypatch):
    """The two members' dpo stages meet each other: they fail unless they run at the same time, which
    the GPU concurrency limit allows here (2 slots; with 1 they would take turns)."""
    use_doubles(monkeypatch, meet_betas={0.1, 0.5})
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"preset": "sweeptest", "run_dir": str(tmp_path / "run"),
                                      "tracking": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
                                      "orchestration": {"gpu_concurrency_limit": 2}}))  # fmt: skip
    result = invoke("sweep", "--config", config, "--grid", "dpo.beta=0.1,0.5")
    assert result.exit_code == 0, result.output
    ran = calls(type("C", (), {"run_dir": str(tmp_path / "run")}))
    assert sorted(ran) == sorted(["sft", "pairs", "reference"] + ["dpo", "evaluate", "ood", "report"] * 2)


@pytest.mark.parametrize(
    "grid, needles",
    [
        (["dpo.betaa=0.1,0.5"], ["--grid dpo.betaa=0.1", "unknown key"]),
        (["dpo.beta=0.1,-1"], ["--grid dpo.beta=-1", "dpo.beta", "greater than 0"]),
        (["dpo.beta="], ["--grid dpo.beta=", "expected KEY=V1,V2"]),
        (["dpo.beta=0.1,,0.5"], ["empty value"]),
        (["dpo.beta=0.1,0.1"], ["listed twice"]),
        (["run_dir=a,b"], ["--grid run_dir", "not sweepable"]),
        ([], ["--grid: give at least one"]),
    ],
)
def test_bad_grids_fail_before_anything_runs(tmp_path, grid, needles):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run")}))
    result = invoke("sweep", "--config", config, *[a for g in grid for a in ("--grid", g)])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    assert all(n in errors[0] for n in needles), errors[0]
    assert not (tmp_path / "run" / "store").exists() or not list((tmp_path / "run" / "store").glob("*/*/manifest.json"))
