"""MLflow tracking: one parent run per pipeline run, one nested run per stage.

MLflow is imported inside functions only, so the core package still imports on a bare GPU box.
Everything goes through MlflowClient with explicit run ids (no fluent active-run stack): the
stage runs may be created from Prefect task threads, where thread-local state would not follow.

Layout of a pipeline run in MLflow:
  parent   tags pipeline=<preset>, prefect_flow_run_id, alignpipe.kind=pipeline; params = the whole
           config (flattened); metrics = every stage's headline metrics as "<stage>/<name>",
           copied even when a stage was cached, so parents compare side by side.
  nested   tags stage, cached, stage_key; params = that stage's config slice; metrics = the
           stage's step metrics as it streams them, then its headline metrics; artifacts = the
           files named in StageSpec.artifacts.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import posixpath
import random
import re
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Optional, Sequence
from urllib.parse import urlsplit, urlunsplit

from alignpipe import mlflow_lineage as lineage
from pipeline_config.schema import PipelineConfig

if TYPE_CHECKING:  # pragma: no cover
    from alignpipe.pipeline import PipelineResult, StageOutcome
    from alignpipe.plan import PlannedStage

log = logging.getLogger(__name__)

# MLflow's limits (mlflow.utils.validation); kept here so this module imports without MLflow.
MAX_PARAM_VAL_LENGTH = 6000
MAX_TAG_VAL_LENGTH = 8000
MAX_KEY_LENGTH = 250
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000

REDACTED = "[redacted]"
TRAINING_STAGES = frozenset({"sft", "dpo"})  # their runs record system metrics
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
# Config keys whose values are never logged. Matched against the last dotted segment; "token"
# must be a whole word so max_new_tokens / prefix_tokens are still logged.
_SECRET_KEY = re.compile(
    r"(api[_-]?key|apikey|secret|passw(or)?d|credential|private[_-]?key|access[_-]?key|(^|[_-])token$|^auth$|[_-]auth$)",
    re.IGNORECASE,
)
# Environment variables whose values must never appear anywhere we log (OPENAI_API_KEY, HF_TOKEN...).
_SECRET_ENV = re.compile(r"(^|_)(API_?KEY|KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)($|_)", re.IGNORECASE)
_MIN_SECRET_LEN = 8

_METRIC_BAD_CHARS = re.compile(r"[^/\w.\- ]")


# ----------------------------------------------------------------------------------------
# Secrets
# ----------------------------------------------------------------------------------------
def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(key.rsplit(".", 1)[-1]))


def secret_env_values(environ: Optional[Mapping[str, str]] = None) -> list[str]:
    """Values of secret-looking environment variables, longest first (so overlaps redact fully)."""
    env = os.environ if environ is None else environ
    values = {v for k, v in env.items() if _SECRET_ENV.search(k) and len(v) >= _MIN_SECRET_LEN}
    return sorted(values, key=len, reverse=True)


_URL_CREDENTIALS = re.compile(r"(://)[^/@\s]+@")


def scrub_text(text: str, secrets: Optional[list[str]] = None) -> str:
    """Replace secret env values and URL credentials (scheme://user:pass@host) with REDACTED."""
    for secret in secret_env_values() if secrets is None else secrets:
        text = text.replace(secret, REDACTED)
    return _URL_CREDENTIALS.sub(rf"\1{REDACTED}@", text)


def redact_uri(uri: str) -> str:
    """Drop user:password from a URI before printing or logging it."""
    parts = urlsplit(uri)
    if parts.password is None and parts.username is None:
        return uri
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, f"{REDACTED}@{host}", parts.path, parts.query, parts.fragment))


def _file_contains(path: Path, secrets: list[str]) -> bool:
    needles = [s.encode() for s in secrets]
    if not needles:
        return False
    overlap = max(len(n) for n in needles) - 1
    tail = b""
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            window = tail + chunk
            if any(n in window for n in needles):
                return True
            tail = window[-overlap:] if overlap else b""
    return False


# ----------------------------------------------------------------------------------------
# Params and metrics in MLflow's shape
# ----------------------------------------------------------------------------------------
def _param_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def flatten_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{"dpo": {"beta": 0.1}} -> {"dpo.beta": "0.1"}: secrets redacted, values cut to MLflow's limit."""
    secrets = secret_env_values()
    out: dict[str, str] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and not is_secret_key(path):
            out.update(flatten_params(value, f"{path}."))
            continue
        text = REDACTED if is_secret_key(path) else scrub_text(_param_value(value), secrets)
        out[path[:MAX_KEY_LENGTH]] = text[:MAX_PARAM_VAL_LENGTH]
    return out


def metric_name(name: str) -> str:
    """A name MLflow accepts: allowed characters only, and no path tricks ('..', leading '/')."""
    clean = _METRIC_BAD_CHARS.sub("_", name).strip("/") or "_"
    clean = posixpath.normpath(clean).lstrip("./") or "_"
    return clean[:MAX_KEY_LENGTH]


def _numeric(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            log.warning("metric %s=%r is not a number; not logged", k, v)
            continue
        out[metric_name(k)] = float(v)
    return out


# ----------------------------------------------------------------------------------------
# Where to track
# ----------------------------------------------------------------------------------------
def resolve_tracking_uri(cfg: PipelineConfig) -> str:
    """cfg.tracking.tracking_uri, else $MLFLOW_TRACKING_URI, else sqlite:///<abs run_dir>/mlflow.db."""
    if cfg.tracking.tracking_uri:
        return cfg.tracking.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(Path(cfg.run_dir) / 'mlflow.db').resolve()}"


def artifact_root(cfg: PipelineConfig) -> str:
    return (Path(cfg.run_dir) / "mlartifacts").resolve().as_uri()


def _is_local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def _sqlite_path(uri: str) -> Optional[Path]:
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///")
    return None if path in ("", ":memory:") else Path(path)


def ui_command(cfg: PipelineConfig, port: int = 5000) -> list[str]:
    return [
        "mlflow", "ui",
        "--backend-store-uri", resolve_tracking_uri(cfg),
        "--default-artifact-root", artifact_root(cfg),
        "--host", "127.0.0.1",
        "--port", str(port),
    ]  # fmt: skip


# MLflow 3.17's UI picks its GenAI or model-training view from a global toggle (the URL parameter
# or a browser setting, default GenAI) that overrides the experiment's mlflow.experimentKind tag:
# links into it name the training view explicitly.
TRAINING_VIEW = "workflowType=machine_learning"


def ui_base(tracking_uri: str, port: int = 5000) -> str:
    """The UI that shows this store: the tracking server itself, or `alignpipe ui --start` for a local one."""
    return tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else f"http://127.0.0.1:{port}"


def ui_url(tracking_uri: str, experiment_id: str, run_id: Optional[str] = None, port: int = 5000) -> str:
    """The MLflow UI page of an experiment's runs, or of one run, in the model-training view."""
    path = f"/#/experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "")
    return f"{redact_uri(ui_base(tracking_uri, port))}{path}?{TRAINING_VIEW}"


# ----------------------------------------------------------------------------------------
# Robust client calls
# ----------------------------------------------------------------------------------------
def _is_lock_error(err: BaseException) -> bool:
    text = str(err).lower()
    return "database is locked" in text or "database table is locked" in text or "database is busy" in text


def retrying(call: Callable[..., Any], *args: Any, attempts: int = 8, **kwargs: Any) -> Any:
    """Retry a client call when several processes contend for one sqlite file (busy/locked)."""
    delay = 0.2
    for attempt in range(attempts):
        try:
            return call(*args, **kwargs)
        except Exception as e:
            if attempt == attempts - 1 or not _is_lock_error(e):
                raise
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 5.0)


@contextmanager
def _init_lock(uri: str) -> Iterator[None]:
    """Serialize first use of a sqlite store: MLflow creates its tables on first connect, and two
    processes doing that at once fail with 'table already exists'."""
    path = _sqlite_path(uri)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(f"{path}.init.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def open_client(cfg: PipelineConfig):
    """An MlflowClient on the resolved tracking URI, with the store initialized safely."""
    from mlflow.tracking import MlflowClient

    uri = resolve_tracking_uri(cfg)
    with _init_lock(uri):
        client = MlflowClient(tracking_uri=uri)
        retrying(client.search_experiments, max_results=1)  # forces store creation under the lock
    return client


def ensure_experiment(client, cfg: PipelineConfig) -> str:
    """The experiment's id, creating it (artifacts under <run_dir>/mlartifacts for local stores).

    It is tagged as a model-training experiment: MLflow 3 opens an untagged one on its GenAI
    traces page instead of its runs."""
    from mlflow.exceptions import MlflowException

    name = cfg.tracking.experiment
    uri = resolve_tracking_uri(cfg)
    with _init_lock(uri):
        exp = retrying(client.get_experiment_by_name, name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                raise ValueError(f"tracking.experiment: '{name}' is deleted in {redact_uri(uri)}; restore or rename it")
            if EXPERIMENT_KIND_TAG not in exp.tags:
                retrying(client.set_experiment_tag, exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            return exp.experiment_id
        location = artifact_root(cfg) if _is_local_store(uri) else None
        try:
            return retrying(client.create_experiment, name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except MlflowException:  # created concurrently by a process on another lock domain
            exp = retrying(client.get_experiment_by_name, name)
            if exp is None:
                raise
            return exp.experiment_id


# ----------------------------------------------------------------------------------------
# Runs whose process died
# ----------------------------------------------------------------------------------------
PID_TAG, HOST_TAG = "alignpipe.pid", "alignpipe.host"


def process_tags() -> dict[str, Any]:
    """Which process owns a run, so a later run can tell that a RUNNING one has lost its owner."""
    return {PID_TAG: os.getpid(), HOST_TAG: socket.gethostname()}


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def mark_orphans_killed(client, experiment_id: str) -> list[str]:
    """Runs left RUNNING by a process that no longer exists on this host (SIGKILL, OOM, power loss)
    are marked KILLED; runs owned by other hosts, or by live processes, are left alone."""
    host = socket.gethostname()
    try:
        running = retrying(
            client.search_runs, [experiment_id], filter_string=f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'",
            max_results=1000,
        )  # fmt: skip
    except Exception as e:  # never block a new run on this housekeeping
        log.warning("could not look for orphaned MLflow runs: %s", e)
        return []
    killed = []
    for run in running:
        pid = run.data.tags.get(PID_TAG, "")
        if pid.isdigit() and int(pid) != os.getpid() and not _process_alive(int(pid)):
            retrying(client.set_terminated, run.info.run_id, "KILLED")
            killed.append(run.info.run_id)
    if killed:
        log.warning("marked %d MLflow run(s) KILLED: their process %s is gone", len(killed), "on this host")
    return killed


# ----------------------------------------------------------------------------------------
# Logging into runs
# ----------------------------------------------------------------------------------------
def _log_batch(client, run_id: str, metrics=(), params=(), tags=()) -> None:
    metrics, params, tags = list(metrics), list(params), list(tags)
    while metrics or params or tags:
        chunk_p, params = params[:MAX_PARAMS_TAGS_PER_BATCH], params[MAX_PARAMS_TAGS_PER_BATCH:]
        room = MAX_PARAMS_TAGS_PER_BATCH - len(chunk_p)
        chunk_t, tags = tags[:room], tags[room:]
        chunk_m, metrics = metrics[:MAX_METRICS_PER_BATCH], metrics[MAX_METRICS_PER_BATCH:]
        retrying(client.log_batch, run_id, metrics=chunk_m, params=chunk_p, tags=chunk_t)


def _tags(values: Mapping[str, Any]):
    from mlflow.entities import RunTag

    secrets = secret_env_values()
    return [RunTag(k, scrub_text(str(v), secrets)[:MAX_TAG_VAL_LENGTH]) for k, v in values.items()]


def _params(flat: Mapping[str, str]):
    from mlflow.entities import Param

    return [Param(k, v) for k, v in flat.items()]


def _metrics(values: Mapping[str, float], step: int = 0):
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, v, now, step) for k, v in _numeric(values).items()]


class MlflowSink:
    """A stage's MetricsSink: streams step metrics into its nested run.

    A failed metrics write is logged and dropped rather than raised: hours of training must
    not die because the tracking database was briefly unavailable.
    """

    def __init__(self, client, run_id: str):
        self.client = client
        self.run_id = run_id
        self._warned = False

    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        try:
            _log_batch(self.client, self.run_id, metrics=_metrics(metrics, step or 0))
        except Exception as e:
            if not self._warned:
                log.warning("could not log step metrics to MLflow (%s); continuing without them", e)
                self._warned = True


class StageRun:
    """The nested run of one stage while it executes."""

    def __init__(self, tracker: "PipelineTracker", planned: "PlannedStage", run_id: str):
        self.tracker = tracker
        self.planned = planned
        self.run_id = run_id
        self.sink = MlflowSink(tracker.client, run_id)

    def record(self, outcome: "StageOutcome") -> None:
        """Headline metrics on this run and, prefixed, on the parent; artifacts; cached tag."""
        client = self.tracker.client
        _log_batch(
            client,
            self.run_id,
            metrics=_metrics({**outcome.metrics, "stage_seconds": outcome.seconds}),
            tags=_tags({"cached": str(outcome.cached).lower(), "stage_dir": outcome.out_dir}),
        )
        prefixed = {f"{outcome.name}/{k}": v for k, v in outcome.metrics.items()}
        _log_batch(client, self.tracker.run_id, metrics=_metrics(prefixed))
        self._log_artifacts(outcome.out_dir)
        lineage.log_datasets(client, self.run_id, outcome.out_dir)
        if lineage.has_model(outcome.out_dir):
            self._log_model(outcome)

    def _log_model(self, outcome: "StageOutcome") -> None:
        """The model as an MLflow model, once per output: a reuse points at the run that logged it."""
        tracker = self.tracker
        earlier = None if not outcome.cached else lineage.earlier_model_run(tracker.client, tracker.experiment_id, outcome.key)
        if earlier is not None:
            _log_batch(tracker.client, self.run_id, tags=_tags({lineage.MODEL_RUN_TAG: earlier}))
            return
        name = tracker.cfg.tracking.register_model
        lineage.log_model(tracker.tracking_uri, self.run_id, tracker.run_id, outcome.out_dir, f"{name}-{outcome.name}" if name else None)

    def _log_artifacts(self, out_dir: Path) -> None:
        secrets = secret_env_values()
        for rel in self.planned.spec.artifacts:
            path = out_dir / rel
            if not path.exists():
                continue
            files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
            for f in files:
                if _file_contains(f, secrets):
                    log.warning("%s contains a secret from the environment; not uploaded", f)
                    continue
                dest = posixpath.dirname(f.relative_to(out_dir).as_posix()) or None
                retrying(self.tracker.client.log_artifact, self.run_id, str(f), dest)


class PipelineTracker:
    """The MLflow tracker at run_pipeline's seam: `pipeline(plan)` opens the parent run and closes
    it FINISHED/FAILED/KILLED; `stage(planned)` is one nested run around a stage."""

    def __init__(
        self,
        cfg: PipelineConfig,
        *,
        flow_run_id: Optional[str] = None,
        entrypoint: str = "run",
        run_name: Optional[str] = None,
        parent_run_id: Optional[str] = None,
        sweep_run_id: Optional[str] = None,
    ):
        """parent_run_id: attach to a pipeline run opened elsewhere (a stage on a work pool records
        its nested run under the pipeline's parent) instead of opening and closing a parent here.
        sweep_run_id: open this pipeline run nested under a sweep's run."""
        self.cfg = cfg
        self.sweep_run_id = sweep_run_id
        self.attached = parent_run_id is not None
        self.flow_run_id = flow_run_id
        self.entrypoint = entrypoint
        self.run_name = run_name or f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
        self.tracking_uri = resolve_tracking_uri(cfg)
        self.client = None
        self.experiment_id: Optional[str] = None
        self.run_id: Optional[str] = parent_run_id

    # -- parent run ------------------------------------------------------------------------
    @contextmanager
    def pipeline(self, plan=None) -> Iterator["PipelineTracker"]:
        with self:
            yield self

    def __enter__(self) -> "PipelineTracker":
        self.client = open_client(self.cfg)
        if self.attached:
            self.experiment_id = retrying(self.client.get_run, self.run_id).info.experiment_id
            return self
        self.experiment_id = ensure_experiment(self.client, self.cfg)
        mark_orphans_killed(self.client, self.experiment_id)
        tags = {
            "pipeline": self.cfg.preset,
            "prefect_flow_run_id": self.flow_run_id or "none",
            "alignpipe.kind": "pipeline",
            "alignpipe.entrypoint": self.entrypoint,
            "run_dir": Path(self.cfg.run_dir).resolve(),
            **process_tags(),
        }
        if self.sweep_run_id:
            tags |= {"mlflow.parentRunId": self.sweep_run_id, "alignpipe.sweep": self.sweep_run_id}
        run = retrying(
            self.client.create_run, self.experiment_id, run_name=self.run_name, tags={t.key: t.value for t in _tags(tags)}
        )
        self.run_id = run.info.run_id
        _log_batch(self.client, self.run_id, params=_params(flatten_params(self.cfg.model_dump(mode="json"))))
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.run_id is None or self.attached:
            return
        if exc_type is None:
            status = "FINISHED"
        elif issubclass(exc_type, KeyboardInterrupt):
            status = "KILLED"
        else:
            status = "FAILED"
            self._tag_error(self.run_id, exc)
        retrying(self.client.set_terminated, self.run_id, status)

    def record_pipeline(self, result: "PipelineResult") -> None:
        if self.attached:
            return
        _log_batch(
            self.client,
            self.run_id,
            metrics=_metrics({"pipeline_seconds": result.seconds, "stages_executed": len(result.executed)}),
            tags=_tags({"stages_executed": ",".join(result.executed) or "none"}),
        )

    def _tag_error(self, run_id: str, exc: Optional[BaseException]) -> None:
        if exc is None:
            return
        try:
            _log_batch(self.client, run_id, tags=_tags({"error": f"{type(exc).__name__}: {exc}"[:2000]}))
        except Exception as e:  # the run still gets marked FAILED below
            log.warning("could not tag the MLflow run with its error: %s", e)

    def summary(self) -> dict[str, Any]:
        """Where this run's records are, for the end-of-run summary."""
        return {
            "tracking_uri": redact_uri(self.tracking_uri),
            "experiment": self.cfg.tracking.experiment,
            "mlflow_experiment_id": self.experiment_id,
            "mlflow_run_id": self.run_id,
            "prefect_flow_run_id": self.flow_run_id,
        }

    # -- stage runs ------------------------------------------------------------------------
    @contextmanager
    def stage(self, planned: "PlannedStage") -> Iterator[StageRun]:
        if self.run_id is None:
            raise RuntimeError("PipelineTracker.stage() used outside `with PipelineTracker(...)`")
        tags = {
            "mlflow.parentRunId": self.run_id,
            "alignpipe.kind": "stage",
            "stage": planned.name,
            "stage_key": planned.key,
            "stage_code": planned.code,
            "cached": str(planned.cached and not planned.forced).lower(),
            "pipeline": self.cfg.preset,
            **process_tags(),
        }
        run = retrying(
            self.client.create_run,
            self.experiment_id,
            run_name=planned.name,
            tags={t.key: t.value for t in _tags(tags)},
        )
        handle = StageRun(self, planned, run.info.run_id)
        _log_batch(self.client, handle.run_id, params=_params(flatten_params(planned.config_json())))
        training = planned.name in TRAINING_STAGES and planned.will_run
        monitor = lineage.system_metrics_monitor(handle.run_id, self.tracking_uri) if training else None
        try:
            yield handle
        except BaseException as e:
            self._tag_error(handle.run_id, e)
            status = "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED"
            retrying(self.client.set_terminated, handle.run_id, status)
            raise
        finally:
            if monitor is not None:
                monitor.finish()
        retrying(self.client.set_terminated, handle.run_id, "FINISHED")


class SweepTracker:
    """The MLflow run of a sweep: one parent for the whole grid, each member's pipeline run nested
    under it (and each stage run under its member), the sweep report as its artifacts."""

    def __init__(self, cfg: PipelineConfig, grid: Sequence[str], *, flow_run_id: Optional[str] = None, run_name: Optional[str] = None):
        self.cfg = cfg
        self.grid = list(grid)
        self.flow_run_id = flow_run_id
        self.run_name = run_name or f"{cfg.preset}-sweep-{time.strftime('%Y%m%d-%H%M%S')}"
        self.tracking_uri = resolve_tracking_uri(cfg)
        self.client = None
        self.experiment_id: Optional[str] = None
        self.run_id: Optional[str] = None

    def __enter__(self) -> "SweepTracker":
        self.client = open_client(self.cfg)
        self.experiment_id = ensure_experiment(self.client, self.cfg)
        tags = {"alignpipe.kind": "sweep", "pipeline": self.cfg.preset, "grid": " ".join(self.grid),
                "prefect_flow_run_id": self.flow_run_id or "none", **process_tags()}  # fmt: skip
        run = retrying(self.client.create_run, self.experiment_id, run_name=self.run_name, tags={t.key: t.value for t in _tags(tags)})
        self.run_id = run.info.run_id
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.run_id is None:
            return
        status = "FINISHED" if exc_type is None else ("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")
        retrying(self.client.set_terminated, self.run_id, status)

    def member(self, cfg: PipelineConfig, label: str) -> PipelineTracker:
        return PipelineTracker(cfg, flow_run_id=self.flow_run_id, entrypoint="sweep", run_name=label, sweep_run_id=self.run_id)

    def record(self, report_dir: Path, sweep_id: str, members: int) -> None:
        _log_batch(self.client, self.run_id, metrics=_metrics({"members": members}), tags=_tags({"sweep_id": sweep_id}))
        for f in sorted(p for p in report_dir.iterdir() if p.is_file()):
            retrying(self.client.log_artifact, self.run_id, str(f), None)

    def summary(self) -> dict[str, Any]:
        return {"tracking_uri": redact_uri(self.tracking_uri), "experiment": self.cfg.tracking.experiment,
                "mlflow_experiment_id": self.experiment_id, "mlflow_run_id": self.run_id, "prefect_flow_run_id": self.flow_run_id}  # fmt: skip


# ----------------------------------------------------------------------------------------
# Reading runs back (alignpipe runs / compare)
# ----------------------------------------------------------------------------------------
def search_pipeline_runs(cfg: PipelineConfig, limit: int = 20, experiment: Optional[str] = None, kinds: Sequence[str] = ("pipeline",)) -> list:
    """Parent runs (pipelines, or sweeps too), newest first."""
    client = open_client(cfg)
    exp = retrying(client.get_experiment_by_name, experiment or cfg.tracking.experiment)
    if exp is None:
        return []
    runs = []
    for kind in kinds:  # MLflow's filter language has no OR
        runs += retrying(client.search_runs, [exp.experiment_id], filter_string=f"tags.`alignpipe.kind` = '{kind}'",
                         order_by=["attributes.start_time DESC"], max_results=limit)  # fmt: skip
    return sorted(runs, key=lambda r: -r.info.start_time)[:limit]


def sweep_members(cfg: PipelineConfig, sweep_run) -> list:
    """The member pipeline runs of a sweep's run, in the order they started."""
    client = open_client(cfg)
    runs = retrying(client.search_runs, [sweep_run.info.experiment_id],
                    filter_string=f"tags.`alignpipe.sweep` = '{sweep_run.info.run_id}'", max_results=1000)  # fmt: skip
    return sorted(runs, key=lambda r: r.info.start_time)


def get_runs(cfg: PipelineConfig, run_ids: list[str]) -> list:
    """Runs by id (a unique prefix of at least 6 characters of a parent run id also works)."""
    from mlflow.exceptions import MlflowException

    client = open_client(cfg)
    runs = []
    recent = None
    for rid in run_ids:
        try:
            runs.append(retrying(client.get_run, rid))
            continue
        except MlflowException:
            pass
        if recent is None:
            recent = search_pipeline_runs(cfg, limit=500, kinds=("pipeline", "sweep"))
        matches = [r for r in recent if len(rid) >= 6 and r.info.run_id.startswith(rid)]
        if len(matches) != 1:
            raise ValueError(f"run id '{rid}': {'ambiguous' if matches else 'not found'} in {redact_uri(resolve_tracking_uri(cfg))}")
        runs.append(matches[0])
    return runs

