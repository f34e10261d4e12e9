"""The flow a work pool runs for one stage of a pipeline run that lives elsewhere.

The pipeline flow maps a stage to a pool (orchestration.work_pools) and starts a run of this
flow's deployment `alignpipe-stage/<pool>`, then waits. Here, on the pool's worker: plan the one
stage (its upstream outputs must already be in the shared store), take the GPU slot, run it
through the store (lock, compute, manifest-last publish) with its nested MLflow run under the
pipeline's parent run, and record in the manifest which flow run and pool computed it.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Optional

from prefect import flow
from prefect.concurrency.sync import concurrency
from prefect.runtime import deployment, flow_run

from alignpipe.pipeline import NullTracker, launcher_for, run_stage
from alignpipe.plan import PipelineError, plan_pipeline
from alignpipe.tracking import PipelineTracker
from pipeline_config import PipelineConfig
from tasks import quiet_failures
from tasks.stages import GPU_LIMIT_NAME

STAGE_FLOW = "alignpipe-stage"


def _run_name() -> str:
    params = flow_run.parameters
    return f"{(params.get('config') or {}).get('preset', 'alignpipe')}-{params.get('stage', 'stage')}"


def _work_pool() -> str:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run.id).work_pool_name or ""


@flow(name=STAGE_FLOW, flow_run_name=_run_name, persist_result=False, log_prints=True)
def alignpipe_stage(config: dict[str, Any], stage: str, parent_run_id: Optional[str] = None, force: bool = False) -> dict[str, Any]:
    """Run one stage of a pipeline run whose upstream stages are already in the store."""
    quiet_failures.install()
    cfg = PipelineConfig.model_validate(config)
    plan = plan_pipeline(cfg, [stage], [stage] if force else [])
    planned = plan[stage]
    missing = [p.name for p in plan if p.name != stage and not p.cached]
    if missing:
        raise PipelineError(f"stage '{stage}' on this pool needs {', '.join(missing)} in the store {plan.store.root} first")
    tracker = PipelineTracker(cfg, parent_run_id=parent_run_id) if parent_run_id else NullTracker()
    origin = {"prefect_flow_run_id": str(flow_run.id), "work_pool": _work_pool(), "deployment": str(deployment.name or "")}
    holds_gpu = planned.spec.uses_gpu and planned.will_run
    with tracker.pipeline(plan), tracker.stage(planned) as run:
        with concurrency(GPU_LIMIT_NAME, occupy=1, strict=False) if holds_gpu else nullcontext():
            outcome = run_stage(planned, plan.store, sink=run.sink, launcher=launcher_for(cfg), origin=origin)
        run.record(outcome)
    return outcome.to_dict()
