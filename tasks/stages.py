"""One Prefect task run per stage execution, wrapping whatever executor the flow built.

Caching is ours, not Prefect's: Prefect's default cache policy includes the run id (so it never
reuses across runs) and would need to hash our arguments; the content-addressed store in
alignpipe.cache decides what is reused. Hence cache_policy=NO_CACHE, no result persistence and
no retries (a failed stage is re-attempted by running the pipeline again; training resumes from
its resume_dir).

GPU stages hold one slot of the global concurrency limit GPU_LIMIT_NAME while they compute, so
pipelines started by several deployments share a GPU box without oversubscribing it. The flow
creates or updates that limit from cfg.orchestration.gpu_concurrency_limit. Against the
ephemeral server it coordinates only this process (which runs stages one at a time anyway); if
the API refuses to create it, the stage runs without a slot (non-strict) after a warning. GPU
task runs are also tagged `gpu`, so a tag limit (`prefect concurrency-limit create gpu 1`)
works too. Slots are leases the running process renews: a killed pipeline frees its slot when
the lease expires (5 minutes) instead of blocking the GPU forever.
"""
from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Callable

from prefect import get_client, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency

from alignpipe.runner import PlannedStage, StageOutcome

GPU_LIMIT_NAME = "alignpipe-gpu"
GPU_TAG = "gpu"

log = logging.getLogger(__name__)

Executor = Callable[[PlannedStage], StageOutcome]


def ensure_gpu_limit(limit: int) -> bool:
    """Create or update the global GPU concurrency limit; False (and a warning) if unavailable."""
    try:
        with get_client(sync_client=True) as client:
            client.upsert_global_concurrency_limit_by_name(GPU_LIMIT_NAME, limit)
        return True
    except Exception as e:  # older servers, no permissions, ...: run without the limit
        log.warning("could not set the Prefect concurrency limit '%s' (%s); GPU stages run unlimited", GPU_LIMIT_NAME, e)
        return False


@task(name="stage", cache_policy=NO_CACHE, retries=0, persist_result=False)
def stage_task(stage: str, planned: PlannedStage, execute: Executor) -> StageOutcome:
    """Run (or reuse) one stage. `stage` is there so the task's inputs name it in the UI."""
    outcome = execute(planned)
    logger = get_run_logger()
    if outcome.cached:
        logger.info("%s: reused %s", stage, outcome.out_dir)
    else:
        logger.info("%s: computed in %.1fs -> %s", stage, outcome.seconds, outcome.out_dir)
    return outcome


def prefect_executor(execute: Executor) -> Executor:
    """Wrap an executor so each call becomes a task run named after its stage.

    The GPU slot is taken here, in the flow, around the task run: a slot released from inside
    a task run is only freed after the task's own bookkeeping, and the next stage then waits
    out a 2 s retry for it.
    """

    def run(planned: PlannedStage) -> StageOutcome:
        # Only GPU stages get a tag: every tagged task run pays a tag-limit lookup on the server.
        tags = [GPU_TAG] if planned.spec.uses_gpu else []
        configured = stage_task.with_options(name=f"stage-{planned.name}", task_run_name=planned.name, tags=tags)
        holds_gpu = planned.spec.uses_gpu and planned.will_run  # a reused output needs no GPU
        with concurrency(GPU_LIMIT_NAME, occupy=1, strict=False) if holds_gpu else nullcontext():
            return configured(planned.name, planned, execute)

    return run
