"""`alignpipe run`'s entry: the Prefect flow, unless there is nothing for it to orchestrate.

A run whose every stage is already in the store computes nothing; without a Prefect server
configured, the flow would first start a temporary one (about 9 s of a cached run's 20 on 2 cores)
whose only record is a flow run of seven cache hits. Such a run goes through alignpipe.pipeline
directly and is recorded in MLflow as every run is. With a server configured (PREFECT_API_URL, or a
profile that sets it) every run is a flow run there, cached or not.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

from alignpipe.plan import Plan
from pipeline_config import PipelineConfig


def prefect_api_url() -> Optional[str]:
    """The Prefect API this process would talk to (env, profile, settings files); None: a temporary server."""
    from prefect.settings import get_current_settings

    return get_current_settings().api.url


def run_or_reuse(cfg: PipelineConfig, plan: Plan, rerun: Sequence[str] = ()) -> dict[str, Any]:
    if not any(p.will_run for p in plan) and prefect_api_url() is None:
        from alignpipe.pipeline import run_reused

        return run_reused(cfg, plan)
    from flows.pipeline import run_flow

    return run_flow(cfg, plan, rerun=rerun)
