"""The Prefect flow: one pipeline run, its stages as task runs wired by their futures.

The flow's parameters carry the validated config (`config`, a PipelineConfig as JSON data), so a
deployment's runs are reproducible: what was validated when it was deployed is what runs. Inside,
everything goes through alignpipe.pipeline.run_pipeline with two adapters plugged in: the MLflow
tracker and the Prefect task dispatcher (tasks/stages.py).
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterator, Optional

from prefect import flow
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from alignpipe.pipeline import PipelineResult, run_pipeline
from alignpipe.plan import Plan, plan_pipeline
from alignpipe.tracking import PipelineTracker
from pipeline_config import PipelineConfig
from tasks import artifacts, quiet_failures
from tasks.stages import PrefectTasks, ensure_gpu_limit
from tasks.workpools import WorkPools, check_deployments

# Threads for task runs: one waiting for its upstream holds one, so there are enough for every stage
# to be pending; how many compute at once is bounded by the GPU concurrency limit and the stages' needs.
MAX_CONCURRENT_STAGES = 32

# A plan made by the caller in this very process (the CLI validates before starting Prefect); a
# deployment's run has none and plans itself.
_handed_plan: ContextVar[Optional[tuple[str, Plan]]] = ContextVar("alignpipe_handed_plan", default=None)


@contextmanager
def handing_plan(cfg: PipelineConfig, plan: Plan) -> Iterator[None]:
    token = _handed_plan.set((cfg.model_dump_json(), plan))
    try:
        yield
    finally:
        _handed_plan.reset(token)


def _plan_for(cfg: PipelineConfig, targets, rerun) -> Plan:
    handed = _handed_plan.get()
    if handed is not None and handed[0] == cfg.model_dump_json():
        plan = handed[1]
        if set(plan.requested) == set(targets or plan.requested) and {p.name for p in plan if p.forced} >= set(rerun or ()):
            return plan
    return plan_pipeline(cfg, targets, rerun or ())


def summarize(result: PipelineResult, tracker: PipelineTracker, preset: str) -> dict[str, Any]:
    return {"preset": preset, **tracker.summary(), **result.summary()}


def _run_name() -> str:
    config = flow_run.parameters.get("config") or {}
    return str(config.get("preset", "alignpipe"))


@flow(
    name="alignpipe-pipeline",
    flow_run_name=_run_name,
    persist_result=False,
    log_prints=True,
    task_runner=ThreadPoolTaskRunner(max_workers=MAX_CONCURRENT_STAGES),
)
def alignpipe_pipeline(
    config: dict[str, Any],
    targets: Optional[list[str]] = None,
    rerun: Optional[list[str]] = None,
) -> dict[str, Any]:
    """Run the DPO pipeline for a validated config; reuse every stage whose key is in the store.

    targets: run only these (and whatever upstream they need); default all.
    rerun: stages to recompute together with everything downstream of them.
    """
    quiet_failures.install()
    cfg = PipelineConfig.model_validate(config)
    plan = _plan_for(cfg, targets, rerun)
    if any(p.spec.uses_gpu and p.will_run for p in plan):
        ensure_gpu_limit(cfg.orchestration.gpu_concurrency_limit)
    tracker = PipelineTracker(cfg, flow_run_id=flow_run.id, entrypoint="flow")
    orch = cfg.orchestration
    elsewhere = None
    if orch.work_pools:
        check_deployments(plan, orch.work_pools)
        elsewhere = WorkPools(orch.work_pools, cfg.model_dump(mode="json"), plan)
    dispatcher = PrefectTasks(orch.retries, orch.retry_delay_s, remote=frozenset(orch.work_pools))
    result = run_pipeline(cfg, plan=plan, tracker=tracker, dispatcher=dispatcher, elsewhere=elsewhere)
    summary = summarize(result, tracker, cfg.preset)
    artifacts.publish(summary)
    return summary


def run_flow(cfg: PipelineConfig, plan: Plan, targets=None, rerun=()) -> dict[str, Any]:
    """Start the flow in this process with a plan the caller already made (and validated)."""
    with handing_plan(cfg, plan):
        return alignpipe_pipeline(config=cfg.model_dump(mode="json"), targets=list(targets) if targets else None, rerun=list(rerun))
