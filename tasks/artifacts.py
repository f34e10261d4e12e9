"""What a pipeline run leaves in the Prefect UI: the report, the win-rate table, the MLflow run.

Artifacts are keyed by preset, so the Prefect UI shows each preset's report as one artifact with a
version per run.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional

from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

WIN_RATE_COLUMNS = ("temperature", "baseline", "win_rate", "stderr", "n_valid", "n_invalid")


def artifact_key(preset: str, what: str) -> str:
    """Prefect keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{preset}-{what}".lower()).strip("-")


def mlflow_run_url(tracking_uri: str, experiment_id: Optional[str], run_id: Optional[str]) -> Optional[str]:
    """The MLflow UI page of a run: the tracking server's own, or `alignpipe ui`'s for a local store."""
    from alignpipe.tracking import ui_url

    if not run_id or not experiment_id:
        return None
    return ui_url(tracking_uri, experiment_id, run_id)


def publish(summary: dict[str, Any]) -> list[str]:
    """Create the run's artifacts from its summary; returns the keys created."""
    preset = summary.get("preset", "alignpipe")
    keys = []
    report = summary.get("report")
    if report and Path(report).is_file():
        key = artifact_key(preset, "report")
        create_markdown_artifact(markdown=Path(report).read_text(), key=key, description=f"report.md of this run ({report})")
        keys.append(key)
    evaluate = next((s for s in summary.get("stages", []) if s["name"] == "evaluate"), None)
    rows_file = Path(evaluate["out_dir"]) / "win_rates.json" if evaluate else None
    if rows_file is not None and rows_file.is_file():
        rows = json.loads(rows_file.read_text())
        if isinstance(rows, list) and rows:
            key = artifact_key(preset, "win-rates")
            table = [{c: r.get(c) for c in WIN_RATE_COLUMNS} for r in rows]
            create_table_artifact(table=table, key=key, description="DPO vs each baseline, per sampling temperature (held-out prompts)")
            keys.append(key)
    url = mlflow_run_url(summary.get("tracking_uri", ""), summary.get("mlflow_experiment_id"), summary.get("mlflow_run_id"))
    if url:
        key = artifact_key(preset, "mlflow-run")
        local = not summary.get("tracking_uri", "").startswith(("http://", "https://"))
        note = " (local store: start the UI with `alignpipe ui --start`)" if local else ""
        create_link_artifact(link=url, link_text=f"MLflow run {summary['mlflow_run_id'][:12]}", key=key,
                             description=f"the MLflow parent run with one nested run per stage{note}")  # fmt: skip
        keys.append(key)
    return keys
