"""Stages on other machines: the pipeline on one work pool, dpo mapped to another, real workers.

A real `prefect server start`, two process work pools with one real `prefect worker` each, the
real stages on a tiny model. The pipeline flow runs on pool `flows`; orchestration.work_pools sends
dpo to pool `gpu`, whose worker runs it in its own process. Proof: the dpo manifest names the
stage flow run and pool that computed it, with a pid that is not the pipeline's; the MLflow parent
run holds every stage's nested run, dpo's created by that other process; a second run reuses
everything and sends nothing to the pool.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from prefect_server import PREFECT
from tiny_pipeline import ALL_STAGES, tiny_pipeline_config

pytestmark = pytest.mark.slow

ALIGNPIPE = [sys.executable, "-m", "alignpipe.cli"]


def _manifest(run_dir: Path, stage: str) -> dict:
    return json.loads(next((run_dir / "store" / stage).glob("*/manifest.json")).read_text())


def _flow_runs(server, deployment: str) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    with server.client() as c:
        return c.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment])))


def _trigger_and_wait(server, workers, timeout: float = 240):
    """Start a run of the pipeline deployment and wait for it to end; returns the flow run."""
    out = server.run([PREFECT, "deployment", "run", "alignpipe-pipeline/tiny"])
    assert out.returncode == 0, out.stdout
    run_id = next(line.split()[-1] for line in out.stdout.splitlines() if "UUID" in line)
    deadline = time.monotonic() + timeout
    with server.client() as c:
        while time.monotonic() < deadline:
            for name, proc in workers:
                assert proc.poll() is None, f"worker {name} died:\n{server.log(name)[-3000:]}"
            run = c.read_flow_run(run_id)
            if run.state is not None and run.state.is_final():
                logs = "\n".join(f"--- {n}\n{server.log(n)[-4000:]}" for n, _ in workers)
                assert run.state.is_completed(), f"pipeline run ended {run.state.type}: {run.state.message}\n{logs}"
                return run
            time.sleep(1)
    raise AssertionError(f"pipeline run {run_id} did not finish in {timeout:.0f}s:\n" + "\n".join(server.log(n)[-3000:] for n, _ in workers))


def test_dpo_mapped_to_another_pool_runs_in_its_workers_process(prefect_server, tmp_path, tiny_model_dir):
    config = tiny_pipeline_config(tmp_path, tiny_model_dir, orchestration={"work_pools": {"dpo": "gpu"}})
    run_dir = tmp_path / "run"
    for pool in ("flows", "gpu"):
        created = prefect_server.run([PREFECT, "work-pool", "create", pool, "--type", "process"])
        assert created.returncode == 0, created.stdout
    deployed = prefect_server.run([*ALIGNPIPE, "deploy", "--work-pool", "flows", "--config", str(config), "--name", "tiny"])
    assert deployed.returncode == 0, deployed.stdout
    assert "deployment alignpipe-stage/gpu created: runs dpo on pool gpu" in deployed.stdout
    env = {**prefect_server.env, "PREFECT_WORKER_QUERY_SECONDS": "2"}
    workers = [(f"worker-{pool}", prefect_server.spawn(f"worker-{pool}", [PREFECT, "worker", "start", "--pool", pool], env=env))
               for pool in ("flows", "gpu")]  # fmt: skip

    pipeline_run = _trigger_and_wait(prefect_server, workers)
    stage_runs = _flow_runs(prefect_server, "gpu")
    assert len(stage_runs) == 1 and stage_runs[0].state.is_completed() and stage_runs[0].work_pool_name == "gpu"
    assert stage_runs[0].parent_task_run_id is not None  # started from the pipeline's dpo task: the flow waited for it

    dpo, sft = _manifest(run_dir, "dpo"), _manifest(run_dir, "sft")
    assert dpo["origin"] == {"prefect_flow_run_id": str(stage_runs[0].id), "work_pool": "gpu", "deployment": "gpu"}
    assert sft["origin"] == {} and dpo["pid"] != sft["pid"] and dpo["host"] and sft["host"]
    assert str(stage_runs[0].id) in prefect_server.log("worker-gpu")
    assert str(pipeline_run.id) in prefect_server.log("worker-flows") and str(stage_runs[0].id) not in prefect_server.log("worker-flows")

    mlflow = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.get_experiment_by_name("alignpipe")
    (parent,) = mlflow.search_runs([experiment.experiment_id], filter_string=f"tags.prefect_flow_run_id = '{pipeline_run.id}'")
    assert parent.info.status == "FINISHED" and int(parent.data.tags["alignpipe.pid"]) == sft["pid"]
    children = {r.data.tags["stage"]: r for r in mlflow.search_runs(
        [experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")}  # fmt: skip
    assert sorted(children) == sorted(ALL_STAGES) and all(r.info.status == "FINISHED" for r in children.values())
    assert int(children["dpo"].data.tags["alignpipe.pid"]) == dpo["pid"]  # its nested run was made over there
    assert "dpo/final_loss" in parent.data.metrics  # and its headline metrics reached the parent

    again = _trigger_and_wait(prefect_server, workers)
    (second,) = mlflow.search_runs([experiment.experiment_id], filter_string=f"tags.prefect_flow_run_id = '{again.id}'")
    assert second.data.tags["stages_executed"] == "none"
    assert len(_flow_runs(prefect_server, "gpu")) == 1  # a reused dpo is read where the flow runs
