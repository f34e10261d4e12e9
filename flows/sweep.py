"""The Prefect flow of a sweep: every grid point's pipeline in one flow run, one graph of task runs.

Stages the members share (same key: sft, pairs and reference for a beta sweep) are one task run
that the others wait for and reuse; the members' own stages run concurrently as far as the task
runner and the GPU concurrency limit allow. MLflow: one sweep run, each member's pipeline run
nested under it, each stage's run under its member.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterator, Optional

from prefect import flow
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from alignpipe.plan import Plan
from alignpipe.sweep import GridPoint, plan_members, run_sweep
from alignpipe.tracking import SweepTracker
from pipeline_config import PipelineConfig
from tasks import quiet_failures
from tasks.stages import PrefectTasks, ensure_gpu_limit

MAX_CONCURRENT_STAGES = 32  # see flows/pipeline.py

_handed_plans: ContextVar[Optional[tuple[str, list[Plan]]]] = ContextVar("alignpipe_handed_sweep_plans", default=None)


@contextmanager
def handing_plans(configs: list[PipelineConfig], plans: list[Plan]) -> Iterator[None]:
    token = _handed_plans.set(("\n".join(c.model_dump_json() for c in configs), plans))
    try:
        yield
    finally:
        _handed_plans.reset(token)


def _run_name() -> str:
    members = flow_run.parameters.get("members") or [{}]
    return f"{members[0].get('preset', 'alignpipe')}-sweep"


@flow(name="alignpipe-sweep", flow_run_name=_run_name, persist_result=False, log_prints=True,
      task_runner=ThreadPoolTaskRunner(max_workers=MAX_CONCURRENT_STAGES))  # fmt: skip
def alignpipe_sweep(members: list[dict[str, Any]], points: list[list[list[Any]]], grid: list[str]) -> dict[str, Any]:
    """One pipeline per grid point: `members` are the validated configs, `points` their grid values."""
    quiet_failures.install()
    configs = [PipelineConfig.model_validate(m) for m in members]
    grid_points = [GridPoint(tuple((k, v) for k, v in point)) for point in points]
    handed = _handed_plans.get()
    plans = handed[1] if handed and handed[0] == "\n".join(c.model_dump_json() for c in configs) else plan_members(list(zip(grid_points, configs)))
    if any(p.spec.uses_gpu and p.will_run for plan in plans for p in plan):
        ensure_gpu_limit(configs[0].orchestration.gpu_concurrency_limit)
    orch = configs[0].orchestration
    with SweepTracker(configs[0], grid, flow_run_id=flow_run.id) as sweep:
        trackers = [sweep.member(cfg, point.label) for point, cfg in zip(grid_points, configs)]
        result = run_sweep(list(zip(grid_points, configs)), plans, trackers, dispatcher=PrefectTasks(orch.retries, orch.retry_delay_s))
        sweep.record(result.report_dir, result.sweep_id, len(configs))
    return {
        **sweep.summary(),
        "sweep_id": result.sweep_id,
        "report": str(result.report_dir / "sweep_report.md"),
        "members": [{"label": p.label, "mlflow_run_id": t.run_id, **r.summary()} for p, t, r in zip(grid_points, trackers, result.results)],
    }


def run_sweep_flow(members: list[tuple[GridPoint, PipelineConfig]], plans: list[Plan], grid: list[str]) -> dict[str, Any]:
    """Start the sweep flow in this process with plans the caller already made and validated."""
    configs = [cfg for _, cfg in members]
    with handing_plans(configs, plans):
        return alignpipe_sweep(
            members=[c.model_dump(mode="json") for c in configs], points=[[list(kv) for kv in p.values] for p, _ in members], grid=grid
        )
