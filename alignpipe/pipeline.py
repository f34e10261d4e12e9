"""The one entry every way of running goes through: `run_pipeline(cfg, targets, rerun, ...)`.

    plan (alignpipe.plan)  ->  for each stage, via a dispatcher:  tracking run around
                               run_stage (reuse the store's output for its key, or compute it)

`alignpipe run`, `alignpipe stage`, the Prefect flow and every deployment call it. What differs is
plugged in at this seam, not wrapped around it: the tracker (MLflow parent and nested runs, or
none; `alignpipe stage` gets its own from `run_one_stage` here, so the CLI composes nothing) and the dispatcher (stages in order in this process, or Prefect tasks with futures that run
independent stages concurrently and send mapped stages to work pools). Pure Python: no Prefect or
MLflow import here.
"""
from __future__ import annotations

import importlib.util
import time
import traceback
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Protocol, Sequence

from rich.console import Console
from rich.text import Text

from alignpipe.cache import Manifest, StageStore, library_versions, version_drift
from alignpipe.launcher import AccelerateLauncher
from alignpipe.plan import Plan, PipelineError, PlannedStage, StageCatalog, plan_pipeline
from alignpipe.stages.base import MetricsSink, NullSink, StageContext
from pipeline_config.schema import PipelineConfig

REPORT_STAGE = "report"  # whose first artifact is "the report" pointed to at the end of a run


class StageFailed(RuntimeError):
    """A stage raised. Its output was not published; the cause is chained.

    Built from strings only, so it pickles (Prefect may serialize a failed task's exception).
    """

    def __init__(self, stage: str, detail: str):
        super().__init__(stage, detail)
        self.stage = stage
        self.detail = detail

    @classmethod
    def from_error(cls, stage: str, error: BaseException) -> "StageFailed":
        if isinstance(error, StageFailed):
            return error
        return cls(stage, f"{type(error).__name__}: {' '.join(str(error).split())}")

    def __str__(self) -> str:
        return f"stage '{self.stage}' failed: {self.detail}"


@dataclass(frozen=True)
class StageOutcome:
    name: str
    key: str
    out_dir: Path
    cached: bool  # reused from the store: nothing was computed this time
    seconds: float  # wall time this run (lookup time when cached)
    metrics: dict[str, float]  # the stage's headline metrics (from the manifest when cached)
    host: str = ""  # where the output was computed (from its manifest)
    pid: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "key": self.key, "out_dir": str(self.out_dir), "cached": self.cached,
            "seconds": round(self.seconds, 3), "metrics": dict(self.metrics), "host": self.host, "pid": self.pid,
        }  # fmt: skip


@dataclass
class PipelineResult:
    plan: Plan
    outcomes: list[StageOutcome] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def executed(self) -> list[str]:
        return [o.name for o in self.outcomes if not o.cached]

    @property
    def reused(self) -> list[str]:
        return [o.name for o in self.outcomes if o.cached]

    def outcome(self, name: str) -> StageOutcome:
        for o in self.outcomes:
            if o.name == name:
                return o
        raise KeyError(name)

    def artifacts(self, name: str) -> list[str]:
        """Paths of the stage's declared artifacts that exist."""
        outcome = self.outcome(name)
        return [str(outcome.out_dir / rel) for rel in self.plan[name].spec.artifacts if (outcome.out_dir / rel).exists()]

    def summary(self) -> dict[str, Any]:
        """A JSON-able account of the run: what ran, what was reused, metrics, where outputs are."""
        stages = [{**o.to_dict(), "artifacts": self.artifacts(o.name)} for o in self.outcomes]
        report = None
        if REPORT_STAGE in [o.name for o in self.outcomes]:
            found = self.artifacts(REPORT_STAGE)
            report = found[0] if found else str(self.outcome(REPORT_STAGE).out_dir)
        return {
            "seconds": round(self.seconds, 3),
            "executed": self.executed,
            "reused": self.reused,
            "stages": stages,
            "report": report,
            "run_dir": str(self.plan.store.root.parent),
        }


# ----------------------------------------------------------------------------------------
# One stage: reuse or compute
# ----------------------------------------------------------------------------------------
def upstream_dirs(planned: PlannedStage, store: StageStore) -> dict[str, Path]:
    inputs = {}
    for up, key in planned.upstream_keys.items():
        if store.lookup(up, key) is None:
            raise PipelineError(f"stage '{planned.name}' needs the output of '{up}' ({key[:16]}), which is not in the store")
        inputs[up] = store.output_dir(up, key)
    return inputs


def run_stage(
    planned: PlannedStage,
    store: StageStore,
    *,
    sink: Optional[MetricsSink] = None,
    launcher: Optional[AccelerateLauncher] = None,
    say: Callable[[str], None] = print,
    origin: Optional[Mapping[str, str]] = None,
) -> StageOutcome:
    """Reuse the stage's output if its key is in the store (unless forced), else compute it.
    `origin` says who computed it (a work pool's flow run, say), for the manifest."""
    spec = planned.spec
    sink = sink or NullSink()
    inputs = upstream_dirs(planned, store)

    def compute(out_dir: Path, resume_dir: Path) -> Mapping[str, Any]:
        ctx = StageContext(planned.config, out_dir, inputs, sink, resume_dir, say)
        if launcher is not None and launcher.handles(spec):
            return launcher.run(spec, ctx)
        return spec.run(ctx)

    started = time.perf_counter()
    try:
        built = store.build(
            spec.name, planned.key, code=planned.code, config=planned.config_json(), inputs=planned.inputs,
            upstream=planned.upstream_keys, compute=compute, force=planned.forced, code_modules=planned.code_modules,
            origin=origin,
        )  # fmt: skip
    except Exception as e:
        failure = StageFailed.from_error(spec.name, e)
        log_file = store.failure_log(spec.name, planned.key)
        log_file.write_text(traceback.format_exc())
        failure.detail += f" (traceback: {log_file})"
        raise failure from e
    if built.cached:
        drift = version_drift(built.manifest.libraries, library_versions())
        if drift:
            say(f"{spec.name}: reusing an output built with other library versions ({', '.join(drift)})")
    return outcome_of(planned, built.out_dir, built.manifest, cached=built.cached, seconds=time.perf_counter() - started)


def outcome_of(planned: PlannedStage, out_dir: Path, manifest: Manifest, *, cached: bool, seconds: float) -> StageOutcome:
    return StageOutcome(
        name=planned.name, key=planned.key, out_dir=out_dir, cached=cached, seconds=seconds,
        metrics=dict(manifest.metrics), host=manifest.host, pid=manifest.pid,
    )  # fmt: skip


def published_outcome(planned: PlannedStage, store: StageStore, seconds: float) -> StageOutcome:
    """The outcome of a stage another process published (a work pool's run of it)."""
    manifest = store.lookup(planned.name, planned.key)
    if manifest is None:
        raise StageFailed(planned.name, f"its run elsewhere finished but published no output for key {planned.key[:16]}")
    return outcome_of(planned, store.output_dir(planned.name, planned.key), manifest, cached=False, seconds=seconds)


# ----------------------------------------------------------------------------------------
# The seam: trackers, dispatchers, progress
# ----------------------------------------------------------------------------------------
class StageRecord(Protocol):
    sink: MetricsSink

    def record(self, outcome: StageOutcome) -> None: ...


class Tracker(Protocol):
    """Where runs are recorded (alignpipe.tracking.PipelineTracker for MLflow)."""

    def pipeline(self, plan: Plan): ...  # context manager around the whole run

    def stage(self, planned: PlannedStage): ...  # context manager yielding a StageRecord

    def record_pipeline(self, result: PipelineResult) -> None: ...

    def summary(self) -> dict[str, Any]: ...


class _NullStageRecord:
    sink = NullSink()

    def record(self, outcome: StageOutcome) -> None:
        pass


class NullTracker:
    """No tracking: `alignpipe stage --no-track`, or a box without MLflow."""

    def pipeline(self, plan: Plan):
        return nullcontext()

    @contextmanager
    def stage(self, planned: PlannedStage) -> Iterator[_NullStageRecord]:
        yield _NullStageRecord()

    def record_pipeline(self, result: PipelineResult) -> None:
        pass

    def summary(self) -> dict[str, Any]:
        return {}


Execute = Callable[[PlannedStage], StageOutcome]


class Elsewhere(Protocol):
    """Where stages run outside this process as whole stages (a Prefect work pool's deployment):
    the other side plans, locks, computes, publishes and records its own nested tracking run."""

    def handles(self, planned: PlannedStage) -> bool: ...

    def run(self, planned: PlannedStage, parent_run_id: Optional[str]) -> StageOutcome: ...


Job = tuple[Plan, Execute]  # one pipeline's plan and how to execute one of its stages


class Dispatcher(Protocol):
    def run(self, jobs: Sequence[Job]) -> list[list[StageOutcome]]:
        """Execute every planned stage of every job once its upstream is done; a stage whose key
        another job also plans waits for the first to finish (then reuses it). Outcomes per job, in
        plan order."""


def as_reuse(planned: PlannedStage) -> PlannedStage:
    """A stage whose output another job of the same run computes: it waits for that, then reuses
    it (never forced, never computed twice, no GPU slot, nothing sent to a work pool)."""
    return replace(planned, forced=False, cached=True)


def with_twins(jobs: Sequence[Job]) -> list[list[tuple[PlannedStage, Optional[tuple[int, str]]]]]:
    """For each job, its stages in plan order, each paired with (job index, stage) of the first job
    that plans the same key, or None for that first one; twins come back as reuses."""
    first: dict[tuple[str, str], tuple[int, str]] = {}
    out = []
    for j, (plan, _) in enumerate(jobs):
        row = []
        for planned in plan:
            twin = first.setdefault((planned.name, planned.key), (j, planned.name))
            row.append((planned, None) if twin == (j, planned.name) else (as_reuse(planned), twin))
        out.append(row)
    return out


class InOrder:
    """Stages one after another in this process: job by job, in plan order."""

    def run(self, jobs: Sequence[Job]) -> list[list[StageOutcome]]:
        return [[execute(p) for p, _ in row] for (_, execute), row in zip(jobs, with_twins(jobs))]


def _fmt_metrics(metrics: Mapping[str, float], limit: int = 4) -> str:
    items = list(metrics.items())
    text = "  ".join(f"{k}={v:.4g}" for k, v in items[:limit])
    return text + (f"  (+{len(items) - limit})" if len(items) > limit else "")


class ConsoleReporter:
    """One line when each stage starts and ends, so a long pipeline always shows where it is."""

    def __init__(self, console: Optional[Console] = None, total: int = 0):
        self.console = console or Console(stderr=True)
        self.total = total
        self._started = 0

    def say(self, line: str) -> None:
        self.console.print(Text(f"  {line}"), highlight=False)

    def started(self, planned: PlannedStage, label: str = "") -> None:
        self._started += 1
        what = "rerun (forced)" if planned.forced else ("cached" if planned.cached else "running")
        member = f" [magenta]{label}[/magenta]" if label else ""
        self.console.print(f"[bold][{self._started}/{self.total}][/bold] {planned.name}{member} [dim]{planned.key[:12]}[/dim] {what}")

    def finished(self, outcome: StageOutcome) -> None:
        if outcome.cached:
            self.console.print(f"  [cyan]reused[/cyan] {outcome.name}  {_fmt_metrics(outcome.metrics)}")
        else:
            self.console.print(f"  [green]done[/green] {outcome.name} in {outcome.seconds:.1f}s  {_fmt_metrics(outcome.metrics)}")

    def failed(self, planned: PlannedStage, error: BaseException) -> None:
        detail = str(error) or type(error).__name__  # KeyboardInterrupt has no message
        self.console.print(Text.assemble("  ", ("failed", "red"), f" {planned.name}: {detail}"), highlight=False)


def launcher_for(cfg: PipelineConfig) -> Optional[AccelerateLauncher]:
    try:
        return AccelerateLauncher.from_settings(cfg.orchestration.num_processes, cfg.orchestration.accelerate_config)
    except ValueError as e:
        raise PipelineError(str(e)) from None


def stage_executor(
    plan: Plan, tracker: Tracker, reporter: ConsoleReporter, launcher: Optional[AccelerateLauncher],
    elsewhere: Optional[Elsewhere], label: str = "",
) -> Execute:
    """How one stage of this plan runs: here inside its tracking run, or `elsewhere` (which records
    its own) when it has something to compute and elsewhere takes it."""

    def execute(planned: PlannedStage) -> StageOutcome:
        reporter.started(planned, label)
        try:
            if elsewhere is not None and planned.will_run and elsewhere.handles(planned):
                outcome = elsewhere.run(planned, tracker.summary().get("mlflow_run_id"))
            else:
                with tracker.stage(planned) as run:
                    outcome = run_stage(planned, plan.store, sink=run.sink, launcher=launcher, say=reporter.say)
                    run.record(outcome)
        except BaseException as e:
            reporter.failed(planned, e)
            raise
        reporter.finished(outcome)
        return outcome

    return execute


def run_pipeline(
    cfg: PipelineConfig,
    targets: Optional[Sequence[str]] = None,
    rerun: Sequence[str] = (),
    *,
    plan: Optional[Plan] = None,
    tracker: Optional[Tracker] = None,
    dispatcher: Optional[Dispatcher] = None,
    reporter: Optional[ConsoleReporter] = None,
    catalog: Optional[StageCatalog] = None,
    elsewhere: Optional[Elsewhere] = None,
) -> PipelineResult:
    """Plan (unless given a plan), then run or reuse every planned stage inside its tracking run.
    Stages `elsewhere` handles (and that have something to compute) run there instead."""
    plan = plan or plan_pipeline(cfg, targets, rerun, catalog=catalog)
    return run_pipelines([Member(cfg, plan, tracker or NullTracker())], dispatcher=dispatcher, reporter=reporter, elsewhere=elsewhere)[0]


def pipeline_tracker(
    cfg: PipelineConfig, *, track: bool = True, entrypoint: str = "run", run_name: Optional[str] = None,
    say: Optional[Callable[[str], None]] = None,
) -> Tracker:
    """MLflow's tracker (alignpipe.tracking.PipelineTracker) when `track` and MLflow is installed,
    else none; a run that asked to be tracked on a box without MLflow says so in one line."""
    if track and importlib.util.find_spec("mlflow") is None:
        (say or _say_stderr)("MLflow is not installed: running untracked (--no-track)")
        track = False
    if not track:
        return NullTracker()
    from alignpipe.tracking import PipelineTracker

    return PipelineTracker(cfg, entrypoint=entrypoint, run_name=run_name)


def _say_stderr(line: str) -> None:
    Console(stderr=True).print(line, highlight=False)


@dataclass
class OneStageRun:
    """What `alignpipe stage` shows: the pipeline's result and where it was recorded."""

    result: PipelineResult
    tracker: Tracker

    @property
    def tracked(self) -> bool:
        return not isinstance(self.tracker, NullTracker)

    def summary(self) -> dict[str, Any]:
        return {**self.tracker.summary(), **self.result.summary()}


def run_one_stage(
    cfg: PipelineConfig, name: str, *, force: bool = False, track: bool = True, catalog: Optional[StageCatalog] = None,
    say: Optional[Callable[[str], None]] = None,
) -> OneStageRun:
    """`alignpipe stage NAME`, without Prefect: plan NAME and whatever upstream the store lacks
    (every input validated before a model loads), then run it inside an MLflow run of its own when
    `track` (see pipeline_tracker). `force` recomputes NAME even if cached. Raises PipelineError
    (one line: unknown stage, bad inputs) or StageFailed."""
    catalog = catalog or StageCatalog.default()
    if name not in catalog.names:
        raise PipelineError(f"stage {name}: unknown stage (stages: {', '.join(catalog.names)})")
    plan = plan_pipeline(cfg, [name], [name] if force else [], catalog=catalog)
    tracker = pipeline_tracker(cfg, track=track, entrypoint="stage", run_name=f"{cfg.preset}-stage-{name}", say=say)
    return OneStageRun(run_pipeline(cfg, plan=plan, tracker=tracker), tracker)


def run_reused(cfg: PipelineConfig, plan: Plan, *, say: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
    """`alignpipe run` when every planned stage is already in the store and no Prefect server is
    configured: the run is recorded in MLflow (parent and cached stage runs, as always) from this
    process. Prefect would have started a temporary server (about 9 s on 2 cores) only to
    orchestrate nothing; with a server configured (PREFECT_API_URL) the flow runs as usual."""
    if any(p.will_run for p in plan):
        raise ValueError("run_reused: some stages have something to compute")
    tracker = pipeline_tracker(cfg, entrypoint="run", say=say)
    result = run_pipeline(cfg, plan=plan, tracker=tracker)
    return {"preset": cfg.preset, **tracker.summary(), **result.summary(),
            "orchestration": "every stage reused: recorded in MLflow without starting a temporary Prefect server "
                             "(with PREFECT_API_URL set, the flow run is recorded in Prefect too)"}  # fmt: skip


@dataclass
class Member:
    """One pipeline of a run of several (a sweep's grid point), with its own tracker."""

    cfg: PipelineConfig
    plan: Plan
    tracker: Tracker
    label: str = ""  # e.g. "dpo.beta=0.1", shown on the console


def run_pipelines(
    members: Sequence[Member],
    *,
    dispatcher: Optional[Dispatcher] = None,
    reporter: Optional[ConsoleReporter] = None,
    elsewhere: Optional[Elsewhere] = None,
) -> list[PipelineResult]:
    """Run several pipelines as one graph: a stage output that several of them need (same key) is
    computed once. Each member keeps its own tracking run and result."""
    dispatcher = dispatcher or InOrder()
    reporter = reporter or ConsoleReporter(total=sum(len(m.plan.stages) for m in members))
    started = time.perf_counter()
    with ExitStack() as stack:
        for m in members:
            stack.enter_context(m.tracker.pipeline(m.plan))
        jobs = [(m.plan, stage_executor(m.plan, m.tracker, reporter, launcher_for(m.cfg), elsewhere, m.label)) for m in members]
        outcomes = dispatcher.run(jobs)
        results = [PipelineResult(m.plan, o, time.perf_counter() - started) for m, o in zip(members, outcomes)]
        for m, r in zip(members, results):
            m.tracker.record_pipeline(r)
    return results
