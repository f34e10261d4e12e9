"""Schedules fire: a real `prefect server start` (with its scheduler service) creates the runs.

(a) `alignpipe schedule --interval` serves the pipeline from its own process; (b) `alignpipe schedule
--work-pool P --apply` deploys it to a process work pool that a real `prefect worker` polls. In both
the run must be one the server's scheduler created (auto_scheduled), never a manual trigger, and it
must have run our pipeline: its MLflow parent run names the Prefect flow run. Real stages, tiny model.
"""
from __future__ import annotations

import sys

import pytest
from mlflow.tracking import MlflowClient

from prefect_server import PREFECT
from tiny_pipeline import tiny_pipeline_config

pytestmark = pytest.mark.slow

ALIGNPIPE = [sys.executable, "-m", "alignpipe.cli"]
INTERVAL_S = 20


def _pipeline_run_of(tracking_uri: str, flow_run_id: str):
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("alignpipe")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.prefect_flow_run_id = '{flow_run_id}'")
    assert len(runs) == 1, f"no MLflow pipeline run for flow run {flow_run_id}"
    return runs[0]


def test_served_and_work_pool_schedules_fire(prefect_server, tmp_path, tiny_model_dir):
    config = tiny_pipeline_config(tmp_path, tiny_model_dir)
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    # (a) served from this process: the scheduler creates a run, the serving process executes it.
    # The interval is longer than a run, so runs do not pile up on the 2 CPU cores.
    serve = prefect_server.spawn(
        "serve", [*ALIGNPIPE, "schedule", "--interval", str(INTERVAL_S), "--config", str(config), "--name", "served-tiny"]
    )
    run, _ = prefect_server.wait_for_flow_run("served-tiny", timeout=240, procs=[("serve", serve)])
    assert run.auto_scheduled, "the completed run was not created by the scheduler"
    parent = _pipeline_run_of(tracking_uri, str(run.id))
    assert parent.info.status == "FINISHED" and parent.data.tags["stages_executed"] != "none"
    prefect_server.stop_process(serve)

    # (b) a process work pool and a real worker: the deployment's scheduled run completes on the worker.
    with prefect_server.client() as c:
        assert not [p for p in c.read_work_pools() if p.name == "tiny-pool"]
    created = prefect_server.run([PREFECT, "work-pool", "create", "tiny-pool", "--type", "process"])
    assert created.returncode == 0, created.stdout
    applied = prefect_server.run(
        [*ALIGNPIPE, "schedule", "--interval", str(INTERVAL_S), "--config", str(config), "--name", "pooled-tiny", "--work-pool", "tiny-pool", "--apply"]
    )
    assert applied.returncode == 0, applied.stdout
    assert "deployment pooled-tiny created" in applied.stdout
    worker = prefect_server.spawn(
        "worker", [PREFECT, "worker", "start", "--pool", "tiny-pool"], env={**prefect_server.env, "PREFECT_WORKER_QUERY_SECONDS": "2"}
    )
    # Same store: this run reuses every stage, which is all it needs to prove the worker ran it.
    run, _ = prefect_server.wait_for_flow_run("pooled-tiny", timeout=180, procs=[("worker", worker)])
    assert run.auto_scheduled and run.work_pool_name == "tiny-pool"
    parent = _pipeline_run_of(tracking_uri, str(run.id))
    assert parent.info.status == "FINISHED"
    assert str(run.id) in prefect_server.log("worker")

    # Deploying to a pool that does not exist: one line, before anything is created.
    out = prefect_server.run([*ALIGNPIPE, "schedule", "--cron", "0 3 * * *", "--config", str(config), "--work-pool", "nope", "--apply"])
    assert out.returncode == 2, out.stdout
    errors = [line for line in out.stdout.splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: --work-pool nope: no such work pool on {prefect_server.api_url} (create it: prefect work-pool create nope --type process)"]
    assert "Traceback" not in out.stdout
