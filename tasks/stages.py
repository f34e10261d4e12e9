"""Prefect's side of the seam: each stage a task run, fed its upstream task runs' futures.

Handing a stage the futures of its upstream stages makes Prefect wait for them and records them as
the task run's inputs, so the flow run's graph in the Prefect UI is the pipeline's graph, and
independent stages (evaluate and ood; the members of a sweep) run concurrently on the flow's task
runner. GPU stages that compute (not reuse) hold one slot of the global concurrency limit
GPU_LIMIT_NAME (orchestration.gpu_concurrency_limit) while they run, so pipelines on one GPU box
never oversubscribe it; the slot is a lease the running process renews, so a killed pipeline frees
it when the lease expires. GPU task runs are tagged `gpu` too, for tag-based limits.

Caching is ours, not Prefect's: Prefect's default cache policy includes the run id, and the
content-addressed store decides what is reused (cache_policy=NO_CACHE, no result persistence).
Retries are per stage (orchestration.retries): safe because a stage publishes atomically and the
judge's verdict cache means a retried evaluation pays only for verdicts it has not received.
"""
from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Mapping, Sequence

from prefect import get_client, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency

from alignpipe.pipeline import Execute, Job, StageOutcome, with_twins
from alignpipe.plan import Plan, PlannedStage

GPU_LIMIT_NAME = "alignpipe-gpu"
GPU_TAG = "gpu"

log = logging.getLogger(__name__)


def ensure_gpu_limit(limit: int) -> bool:
    """Create or update the global GPU concurrency limit; False (and a warning) if unavailable."""
    try:
        with get_client(sync_client=True) as client:
            client.upsert_global_concurrency_limit_by_name(GPU_LIMIT_NAME, limit)
        return True
    except Exception as e:  # older servers, no permissions, ...: run without the limit
        log.warning("could not set the Prefect concurrency limit '%s' (%s); GPU stages run unlimited", GPU_LIMIT_NAME, e)
        return False


@task(name="stage", cache_policy=NO_CACHE, persist_result=False)
def stage_task(stage: str, planned: PlannedStage, execute: Execute, upstream: list, remote: bool = False) -> StageOutcome:
    """Run (or reuse) one stage once its upstream stages are done. `stage` names it in the UI.
    A remote stage (run by its work pool's deployment) takes the GPU slot there, not here."""
    holds_gpu = planned.spec.uses_gpu and planned.will_run and not remote  # a reused output needs no GPU
    with concurrency(GPU_LIMIT_NAME, occupy=1, strict=False) if holds_gpu else nullcontext():
        outcome = execute(planned)
    logger = get_run_logger()
    if outcome.cached:
        logger.info("%s: reused %s", stage, outcome.out_dir)
    else:
        logger.info("%s: computed in %.1fs -> %s", stage, outcome.seconds, outcome.out_dir)
    return outcome


class PrefectTasks:
    """The Prefect dispatcher: stages as task runs with their upstream futures as inputs."""

    def __init__(self, retries: Mapping[str, int] | None = None, retry_delay_s: float = 10.0, remote: frozenset[str] = frozenset()):
        self.retries = dict(retries or {})
        self.retry_delay_s = retry_delay_s
        self.remote = remote  # stages that run on another work pool

    def submit(self, planned: PlannedStage, execute: Execute, upstream: list):
        configured = stage_task.with_options(
            name=f"stage-{planned.name}",
            task_run_name=planned.name,
            tags=[GPU_TAG] if planned.spec.uses_gpu else [],  # every tagged run pays a tag-limit lookup
            retries=self.retries.get(planned.name, 0),
            retry_delay_seconds=self.retry_delay_s,
        )
        return configured.submit(planned.name, planned, execute, upstream, planned.name in self.remote)

    def run(self, jobs: Sequence[Job]) -> list[list[StageOutcome]]:
        """All jobs' stages as one graph of task runs. A stage another job planned with the same key
        also waits for that job's task run, then reuses its output (alignpipe.pipeline.with_twins).

        A task run waiting for its upstream holds a worker thread, so stages are submitted in
        waves (every job's first stage, then every job's second...): the threads go to stages
        that can start soonest, and members of a sweep progress side by side."""
        rows = with_twins(jobs)
        futures: list[dict[str, object]] = [{} for _ in jobs]
        for i in range(max(len(row) for row in rows)):
            for j, row in enumerate(rows):
                if i >= len(row):
                    continue
                planned, twin = row[i]
                upstream = [futures[j][u] for u in planned.spec.upstream if u in futures[j]]
                if twin is not None:
                    upstream.append(futures[twin[0]][twin[1]])
                futures[j][planned.name] = self.submit(planned, jobs[j][1], upstream)
        return [[futures[j][p.name].result() for p in plan] for j, (plan, _) in enumerate(jobs)]
