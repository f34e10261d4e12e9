"""Scheduled pipeline runs: serve a cron deployment from this process, or deploy to a work pool.

`serve` needs no infrastructure beyond a Prefect API (it starts the ephemeral one if none is
configured) but runs only while the process lives. A work-pool deployment survives restarts;
it needs a Prefect server (PREFECT_API_URL) and a worker polling the pool.
"""
from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = "flows/pipeline.py:alignpipe_pipeline"
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


def flow_parameters(
    preset: str, overrides: Sequence[str] = (), config_path: Optional[str] = None
) -> dict[str, Any]:
    params: dict[str, Any] = {"preset": preset}
    if overrides:
        params["overrides"] = list(overrides)
    if config_path:
        params["config_path"] = str(Path(config_path).resolve())
    return params


def serve(cron: str, parameters: dict[str, Any], name: str = DEFAULT_DEPLOYMENT) -> None:
    """Serve the flow on a cron schedule from this process (blocks until interrupted)."""
    from flows.pipeline import alignpipe_pipeline

    alignpipe_pipeline.serve(name=name, cron=validate_cron(cron), parameters=parameters)


def deploy_command(cron: str, work_pool: str, parameters: dict[str, Any], name: str = DEFAULT_DEPLOYMENT) -> str:
    """The `prefect deploy` command line that creates the same deployment in a work pool."""
    argv = [
        "prefect", "deploy", ENTRYPOINT,
        "--name", name,
        "--pool", work_pool,
        "--cron", validate_cron(cron),
        "--params", json.dumps(parameters, sort_keys=True),
    ]  # fmt: skip
    return f"cd {shlex.quote(str(REPO_ROOT))} && {shlex.join(argv)}"


def deploy(cron: str, work_pool: str, parameters: dict[str, Any], name: str = DEFAULT_DEPLOYMENT) -> Any:
    """Create the deployment in a work pool now (code is loaded from this checkout by the worker)."""
    from prefect import flow

    remote = flow.from_source(source=str(REPO_ROOT), entrypoint=ENTRYPOINT)
    return remote.deploy(
        name=name,
        work_pool_name=work_pool,
        cron=validate_cron(cron),
        parameters=parameters,
        build=False,
        push=False,
    )
