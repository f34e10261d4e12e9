"""Deployments: scheduled pipeline runs served from this process, or deployed to work pools, and the
per-pool stage deployments that run mapped stages (orchestration.work_pools).

`serve` needs no infrastructure beyond a Prefect API (it starts the ephemeral one if none is
configured) but runs only while the process lives: the server's scheduler creates the runs and
this process executes them. A work-pool deployment survives restarts; it needs a Prefect server
(PREFECT_API_URL) and a worker polling the pool (`prefect worker start --pool NAME`).
Both are tested against a real `prefect server start` (tests/test_schedule_real.py).
"""
from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = "flows/pipeline.py:alignpipe_pipeline"
STAGE_ENTRYPOINT = "flows/stage.py:alignpipe_stage"
DEFAULT_DEPLOYMENT = "alignpipe-nightly"


def validate_cron(cron: str) -> str:
    """Raise ValueError('--cron ...') unless Prefect accepts the expression."""
    from pydantic import ValidationError
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=cron)
    except ValidationError:
        raise ValueError(f"--cron '{cron}': not a valid cron expression (e.g. \"0 3 * * *\")") from None
    return cron


def timing(cron: Optional[str], interval: Optional[float]) -> dict[str, Any]:
    """Exactly one of cron / interval (seconds), as the keyword Prefect's serve() and deploy() take."""
    if (cron is None) == (interval is None):
        raise ValueError("--cron / --interval: give exactly one of them")
    if cron is not None:
        return {"cron": validate_cron(cron)}
    if interval <= 0:
        raise ValueError(f"--interval {interval:g}: must be a positive number of seconds")
    return {"interval": float(interval)}


def flow_parameters(cfg) -> dict[str, Any]:
    """The deployment carries the config validated now: every scheduled run runs exactly that."""
    return {"config": cfg.model_dump(mode="json")}


def serve(when: dict[str, Any], parameters: dict[str, Any], name: str = DEFAULT_DEPLOYMENT) -> None:
    """Serve the flow on a schedule from this process (blocks until interrupted)."""
    from flows.pipeline import alignpipe_pipeline

    alignpipe_pipeline.serve(name=name, parameters=parameters, **when)


def deploy_command(when: dict[str, Any], work_pool: str, parameters: dict[str, Any], name: str = DEFAULT_DEPLOYMENT) -> str:
    """The `prefect deploy` command line that creates the same deployment in a work pool."""
    argv = ["prefect", "deploy", ENTRYPOINT, "--name", name, "--pool", work_pool]
    argv += ["--cron", when["cron"]] if "cron" in when else ["--interval", f"{when['interval']:g}"]
    argv += ["--params", json.dumps(parameters, sort_keys=True)]
    return f"cd {shlex.quote(str(REPO_ROOT))} && {shlex.join(argv)}"


def work_pool_exists(name: str) -> bool:
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            return False
    return True


def deploy(when: dict[str, Any], work_pool: str, parameters: dict[str, Any], name: str = DEFAULT_DEPLOYMENT) -> Any:
    """Create the pipeline deployment in a work pool now (a worker loads the code from this
    checkout); `when` empty: runs only when triggered."""
    from prefect import flow

    remote = flow.from_source(source=str(REPO_ROOT), entrypoint=ENTRYPOINT)
    return remote.deploy(name=name, work_pool_name=work_pool, parameters=parameters, build=False, push=False, **when)


def deploy_stage_runner(work_pool: str) -> Any:
    """The deployment `alignpipe-stage/<pool>` that runs mapped stages on that pool."""
    from prefect import flow

    remote = flow.from_source(source=str(REPO_ROOT), entrypoint=STAGE_ENTRYPOINT)
    return remote.deploy(name=work_pool, work_pool_name=work_pool, build=False, push=False)


def mapped_pools(cfg) -> list[str]:
    return sorted(set(cfg.orchestration.work_pools.values()))
