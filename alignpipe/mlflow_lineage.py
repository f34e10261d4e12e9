"""What a stage run consumed and produced, in MLflow's own terms (imported by alignpipe.tracking only).

- Datasets a stage read are logged as run inputs (`datasets.json` in its output: name, content
  digest, source, rows, context), so MLflow's dataset view says what every run trained or was
  evaluated on.
- A training stage's `model/` directory is logged as an MLflow transformers model (weights and
  tokenizer, task text-generation) when the stage computed it, and registered under
  `<tracking.register_model>-<stage>` when that is set. A run that reused the output is tagged
  with the run that logged it instead of logging a second copy.
- Training stages record system metrics (CPU, memory, GPU when present) while they compute.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

from alignpipe.stages.artifacts import MODEL_DIR, read_datasets

log = logging.getLogger(__name__)

MODEL_LOGGED_TAG = "alignpipe.model_logged"
MODEL_RUN_TAG = "alignpipe.model_run"
SYSTEM_METRICS_INTERVAL_S = 10.0  # MLflow's default


def log_datasets(client, run_id: str, out_dir: Path) -> int:
    from mlflow.entities import Dataset, DatasetInput, InputTag

    inputs = [
        DatasetInput(
            Dataset(name=d["name"], digest=d["digest"][:36], source_type=d["source_type"], source=d["source"],
                    profile=f'{{"num_rows": {int(d["rows"])}}}'),  # fmt: skip
            tags=[InputTag("mlflow.data.context", d["context"])],
        )
        for d in read_datasets(out_dir)
    ]
    if inputs:
        client.log_inputs(run_id, datasets=inputs)
    return len(inputs)


def has_model(out_dir: Path) -> bool:
    return (out_dir / MODEL_DIR / "config.json").is_file()


def pip_requirements() -> list[str]:
    """What loading the logged model needs, pinned to what built it. Given explicitly: MLflow's own
    inference of requirements imports torchvision, which this stack does not install."""
    from importlib.metadata import version

    return [f"{name}=={version(name).split('+')[0]}" for name in ("torch", "transformers", "accelerate", "safetensors")]


def log_model(tracking_uri: str, run_id: str, parent_run_id: str, out_dir: Path, registered_name: Optional[str]) -> str:
    """Log `out_dir/model` (weights and tokenizer) into the already created stage run; returns its URI.

    The model is loaded on the CPU for this: MLflow's local-checkpoint path does not work with
    transformers 5 (its pipeline registry changed), its in-memory path does."""
    import mlflow
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = out_dir / MODEL_DIR
    model, tokenizer = AutoModelForCausalLM.from_pretrained(str(path)), AutoTokenizer.from_pretrained(str(path))
    # It would look the model card up on the hub, by a local path: one warning per model, always.
    logging.getLogger("mlflow.transformers").setLevel(logging.ERROR)
    # mlflow.set_tracking_uri also sets $MLFLOW_TRACKING_URI, which the next run in this process (a
    # served schedule, a test) would take for its own: put back what was there.
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri)
    try:
        with mlflow.start_run(run_id=run_id, nested=True, parent_run_id=parent_run_id):
            info = mlflow.transformers.log_model(
                transformers_model={"model": model, "tokenizer": tokenizer},
                name="model",
                task="text-generation",
                pip_requirements=pip_requirements(),
                registered_model_name=registered_name,
            )
            mlflow.set_tag(MODEL_LOGGED_TAG, "true")
    finally:
        mlflow.set_tracking_uri(previous)
    return info.model_uri


def earlier_model_run(client, experiment_id: str, stage_key: str) -> Optional[str]:
    """The run that logged this output's model, if any (a reused output's model is not logged twice)."""
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.stage_key = '{stage_key}' and tags.`{MODEL_LOGGED_TAG}` = 'true'", max_results=1
    )
    return runs[0].info.run_id if runs else None


def system_metrics_monitor(run_id: str, tracking_uri: str):
    """A started MLflow system-metrics monitor for the run, or None when it cannot run here."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S, tracking_uri=tracking_uri)
        monitor.start()
        return monitor
    except Exception as e:  # psutil missing, unsupported platform: tracking goes on without it
        log.warning("no system metrics for run %s: %s", run_id, e)
        return None
