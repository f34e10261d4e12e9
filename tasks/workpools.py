"""Stages on other machines: a mapped stage runs as a run of its pool's stage deployment.

orchestration.work_pools maps stages to Prefect work pools. For a mapped stage with something to
compute, the pipeline flow starts `alignpipe-stage/<pool>` (flows/stage.py) with the validated
config, the stage's name and the MLflow parent run, waits for it, and reads the published output
from the store, which sits on storage every worker sees. A reused output is read where the flow
runs: nothing to send anywhere.
"""
from __future__ import annotations

import time
from typing import Any, Mapping, Optional

from alignpipe.pipeline import StageFailed, StageOutcome, published_outcome
from alignpipe.plan import PipelineError, Plan, PlannedStage
from flows.stage import STAGE_FLOW


def stage_deployment(pool: str) -> str:
    return f"{STAGE_FLOW}/{pool}"


def check_deployments(plan: Plan, pools: Mapping[str, str]) -> None:
    """Every pool that a stage with work to do is mapped to has its stage deployment: else one
    line now, not a run that hangs waiting for a worker that will never come."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    needed = sorted({pools[p.name] for p in plan if p.name in pools and p.will_run})
    with get_client(sync_client=True) as client:
        for pool in needed:
            try:
                client.read_deployment_by_name(stage_deployment(pool))
            except ObjectNotFound:
                stages = ", ".join(s for s, q in pools.items() if q == pool)
                raise PipelineError(
                    f"orchestration.work_pools: {stages} -> '{pool}', but there is no deployment {stage_deployment(pool)} "
                    f"(create it: alignpipe deploy --work-pool {pool})"
                ) from None


class WorkPools:
    """The Elsewhere of alignpipe.pipeline for Prefect work pools."""

    def __init__(self, pools: Mapping[str, str], config: dict[str, Any], plan: Plan):
        self.pools = dict(pools)
        self.config = config
        self.plan = plan

    def handles(self, planned: PlannedStage) -> bool:
        return planned.name in self.pools

    def run(self, planned: PlannedStage, parent_run_id: Optional[str]) -> StageOutcome:
        from prefect.deployments import run_deployment

        pool = self.pools[planned.name]
        started = time.perf_counter()
        params = {"config": self.config, "stage": planned.name, "parent_run_id": parent_run_id, "force": planned.forced}
        remote = run_deployment(stage_deployment(pool), parameters=params, timeout=None)
        if not remote.state.is_completed():
            raise StageFailed(planned.name, f"its run {remote.name} on work pool '{pool}' ended {remote.state.type.value}: {remote.state.message}")
        return published_outcome(planned, self.plan.store, time.perf_counter() - started)
