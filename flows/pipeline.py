"""The Prefect flow: one pipeline run in one process, stages in dependency order.

Layers, outermost first, around each stage: a Prefect task run (tasks.stages), the stage's
nested MLflow run (alignpipe.tracking), then the runner's reuse-or-compute (alignpipe.runner).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from prefect import flow
from prefect.runtime import flow_run

from alignpipe.runner import PipelineResult, Runner, StageCatalog
from alignpipe.tracking import PipelineTracker
from pipeline_config import PipelineConfig, load_config
from tasks.stages import ensure_gpu_limit, prefect_executor

DEFAULT_STAGE_SOURCE = "alignpipe.stages"


def summarize(cfg: PipelineConfig, result: PipelineResult, tracker: PipelineTracker) -> dict[str, Any]:
    return {
        "preset": cfg.preset,
        "run_dir": str(Path(cfg.run_dir).resolve()),
        **tracker.summary(),
        **result.summary(),
    }


def run_pipeline(
    cfg: PipelineConfig,
    catalog: Optional[StageCatalog] = None,
    stages: Optional[Sequence[str]] = None,
    rerun: Sequence[str] = (),
    flow_run_id: Optional[str] = None,
) -> dict[str, Any]:
    """The flow's body: plan, open the MLflow parent run, run each stage as a Prefect task."""
    runner = Runner(cfg, catalog)
    plan = runner.plan(stages, rerun)
    if any(p.spec.uses_gpu and p.will_run for p in plan):
        ensure_gpu_limit(cfg.orchestration.gpu_concurrency_limit)
    with PipelineTracker(cfg, flow_run_id=flow_run_id, entrypoint="flow") as tracker:
        result = runner.run(plan, execute=prefect_executor(tracker.wrap(runner.run_stage)))
        tracker.record_pipeline(result)
    return summarize(cfg, result, tracker)


@flow(name="alignpipe-pipeline", flow_run_name="{preset}", persist_result=False, log_prints=True)
def alignpipe_pipeline(
    preset: str = "demo",
    overrides: Optional[list[str]] = None,
    rerun: Optional[list[str]] = None,
    stages: Optional[list[str]] = None,
    config_path: Optional[str] = None,
    stage_source: str = DEFAULT_STAGE_SOURCE,
) -> dict[str, Any]:
    """Run the DPO pipeline: config preset (or file) + `key=value` overrides; reuse cached stages.

    rerun: stages to recompute together with everything downstream of them.
    stages: run only these (and whatever upstream they need); default all.
    stage_source: where stage specs come from ('module' or 'module:attr'); for custom stage sets.
    """
    cfg = load_config(preset, config_path, overrides or [])
    catalog = StageCatalog.from_source(stage_source)
    return run_pipeline(cfg, catalog, stages=stages, rerun=rerun or [], flow_run_id=flow_run.id)
