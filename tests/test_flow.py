"""The real Prefect flow (ephemeral server) over fake stages, then the `alignpipe run` CLI on it.

One test on purpose: the ephemeral Prefect server costs ~10-20 s to start and is then reused by
both runs. Prefect's home and database go to tmp; PREFECT_API_URL is cleared so the test never
talks to a server configured in the user's environment.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from stage_doubles import ORDER, calls, make_specs, use_doubles

pytestmark = pytest.mark.slow

GPU_STAGES = {"sft", "pairs", "reference", "dpo"}
UPSTREAM = {s.name: set(s.upstream) for s in make_specs()}


def _task_runs(flow_run_id: str, expected: int) -> list:
    """Task runs reach the server as events, so allow them a moment to land."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            if len(runs) >= expected or time.monotonic() > deadline:
                return runs
            time.sleep(0.5)


def _artifacts(flow_run_id: str) -> list:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))


def test_pipeline_flow_runs_stages_as_tasks_and_reuses_them(tmp_path, ephemeral_prefect, monkeypatch, capfd):
    from mlflow.tracking import MlflowClient
    from typer.testing import CliRunner

    from alignpipe.cli import app
    from flows.pipeline import alignpipe_pipeline
    from pipeline_config import load_config

    config = tmp_path / "flowtest.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "preset": "flowtest",
                "run_dir": str(tmp_path / "run"),
                "tracking": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
                "orchestration": {"retries": {"evaluate": 1}, "retry_delay_s": 0},
            }
        )
    )
    cfg = load_config(path=config)
    # evaluate and ood fail unless they run concurrently; evaluate fails its first attempt (retried once)
    use_doubles(monkeypatch, meet={"evaluate", "ood"}, flaky={"evaluate"})

    summary = alignpipe_pipeline(config=cfg.model_dump(mode="json"))
    assert summary["executed"] == ORDER and summary["reused"] == []
    assert calls(cfg)[:4] == ORDER[:4] and sorted(calls(cfg)[4:7]) == ["evaluate", "evaluate", "ood"] and calls(cfg)[7] == "report"
    assert summary["report"] == str(Path(summary["run_dir"]) / "store" / "report" / summary["stages"][-1]["key"][:16] / "report.md")
    flow_run_id = summary["prefect_flow_run_id"]
    assert flow_run_id

    # MLflow: the parent run knows its Prefect flow run; every stage has a nested run.
    mlflow = MlflowClient(summary["tracking_uri"])
    parent = mlflow.get_run(summary["mlflow_run_id"])
    assert parent.data.tags["prefect_flow_run_id"] == flow_run_id
    assert parent.data.tags["pipeline"] == "flowtest"
    assert parent.info.status == "FINISHED"
    attempts = mlflow.search_runs([parent.info.experiment_id], filter_string="tags.stage = 'evaluate'")
    assert sorted(r.info.status for r in attempts) == ["FAILED", "FINISHED"]  # the failed attempt, then the retry

    # Prefect artifacts: the report, the win-rate table, the link to the MLflow parent run.
    artifacts = _artifacts(flow_run_id)
    assert {a.key: a.type for a in artifacts} == {"flowtest-report": "markdown", "flowtest-win-rates": "table", "flowtest-mlflow-run": "markdown"}
    by_key = {a.key: a for a in artifacts}
    assert by_key["flowtest-report"].data == "# report\n"
    assert '"win_rate": 0.6' in str(by_key["flowtest-win-rates"].data).replace("'", '"')
    assert f"/#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}" in by_key["flowtest-mlflow-run"].data

    # Prefect: one task run per stage, GPU stages tagged, the GPU concurrency limit in place.
    task_runs = _task_runs(flow_run_id, len(ORDER))
    assert sorted(t.name for t in task_runs) == sorted(ORDER)
    assert {t.name for t in task_runs if "gpu" in t.tags} == GPU_STAGES
    assert all(t.state is None or t.state.is_completed() for t in task_runs)
    # The task graph is the stage graph: each task run's inputs are its upstream stages' task runs.
    by_id = {str(t.id): t.name for t in task_runs}
    for t in task_runs:
        fed_by = {by_id[str(inp.id)] for inp in t.task_inputs.get("upstream", [])}
        assert fed_by == UPSTREAM[t.name], t.name
    from prefect import get_client

    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name("alignpipe-gpu").limit == cfg.orchestration.gpu_concurrency_limit

    # Second run through the CLI: nothing recomputed, the summary table says so.
    result = CliRunner().invoke(app, ["run", "--config", str(config)])
    assert result.exit_code == 0, result.output
    first_keys = {s["name"]: s["key"][:12] for s in summary["stages"]}
    assert len(calls(cfg)) == len(ORDER) + 1, f"first run's keys {first_keys}; second run:\n{result.output}"
    assert "0 ran, 7 reused" in result.output
    rows = [line for line in result.output.splitlines() if line.split("│")[1:2] and line.split("│")[1].strip() in ORDER]
    assert len(rows) == len(ORDER) and all(row.split("│")[2].strip() == "yes" for row in rows)
    assert "report.md" in result.output and "mlflow ui --backend-store-uri" in result.output

    parents = mlflow.search_runs([parent.info.experiment_id], filter_string="tags.`alignpipe.kind` = 'pipeline'")
    assert len(parents) == 2
    latest = max(parents, key=lambda r: r.info.start_time)
    assert latest.data.tags["stages_executed"] == "none"
    assert latest.data.metrics["evaluate/win_rate"] == 0.6

    # A stage that crashes under the flow: exit 1 naming it, MLflow parent FAILED, and the
    # previous output of the forced stage is still intact.
    dpo_dir = Path(summary["stages"][3]["out_dir"])
    use_doubles(monkeypatch, fail={"dpo"})
    capfd.readouterr()
    failed = CliRunner().invoke(app, ["run", "--config", str(config), "--rerun", "dpo"])
    assert failed.exit_code == 1, failed.output
    assert "Error: stage 'dpo' failed: RuntimeError: dpo exploded on purpose" in failed.output
    logged = capfd.readouterr()
    assert "Traceback" not in failed.output + logged.out + logged.err  # an expected failure is one line, Prefect's logs too
    assert (dpo_dir / "manifest.json").exists() and not (dpo_dir / "partial.bin").exists()
    newest = max(mlflow.search_runs([parent.info.experiment_id], filter_string="tags.`alignpipe.kind` = 'pipeline'"),
                 key=lambda r: r.info.start_time)  # fmt: skip
    assert newest.info.status == "FAILED"

