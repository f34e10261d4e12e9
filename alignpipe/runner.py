"""The pipeline runner: which stages to run, their cache keys, and running or reusing each one.

Pure Python (no Prefect, no MLflow) so `alignpipe stage NAME` works on a bare GPU box. The
orchestration layers wrap `Runner.run_stage` (MLflow: a nested run around it; Prefect: a task
around that) and hand the wrapped function back to `Runner.run` as `execute`.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Iterable, Mapping, Optional, Protocol, Sequence

from rich.console import Console
from rich.text import Text

from alignpipe.cache import StageStore, canonical_json, stage_key, validate_metrics
from alignpipe.stages.base import MetricsSink, NullSink, StageContext, StageSpec
from pipeline_config.schema import PipelineConfig

log = logging.getLogger(__name__)

# Stages whose work is data-parallel training; they go through `accelerate launch` when
# orchestration.num_processes > 1. The others (sampling, scoring, reports) run in-process.
DISTRIBUTED_STAGES: frozenset[str] = frozenset({"sft", "dpo"})
# The stage whose first artifact is "the report" pointed to at the end of a run.
REPORT_STAGE = "report"


class PipelineError(ValueError):
    """A one-line, user-facing error about what to run (unknown stage, bad --rerun, cycle)."""


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
        return cls(stage, f"{type(error).__name__}: {error}")

    def __str__(self) -> str:
        return f"stage '{self.stage}' failed: {self.detail}"


# ----------------------------------------------------------------------------------------
# Which stages exist
# ----------------------------------------------------------------------------------------
class StageCatalog:
    """Stage names in pipeline order, loaded lazily: a stage whose module is missing or broken
    fails with a clear error when it is needed, and does not stop unrelated stages."""

    def __init__(self, names: Sequence[str], load: Callable[[str], StageSpec]):
        self.names: tuple[str, ...] = tuple(names)
        self._load = load
        self._specs: dict[str, StageSpec] = {}

    @classmethod
    def of(cls, specs: Iterable[StageSpec]) -> "StageCatalog":
        table = {s.name: s for s in specs}
        return cls(list(table), table.__getitem__)

    @classmethod
    def default(cls) -> "StageCatalog":
        from alignpipe import stages

        return cls(stages.STAGE_ORDER, stages.get_stage)

    @classmethod
    def from_source(cls, source: str) -> "StageCatalog":
        """'pkg.module' exposing STAGE_ORDER and get_stage, or 'pkg.module:attr' naming a list of
        StageSpecs or a function returning one. Lets a flow parameter pick a custom stage set."""
        module_name, _, attr = source.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise PipelineError(f"stage source '{source}': cannot import {module_name} ({e})") from None
        if not attr:
            if not (hasattr(module, "STAGE_ORDER") and hasattr(module, "get_stage")):
                raise PipelineError(f"stage source '{source}': module has no STAGE_ORDER/get_stage")
            return cls(module.STAGE_ORDER, module.get_stage)
        obj = getattr(module, attr, None)
        if obj is None:
            raise PipelineError(f"stage source '{source}': {module_name} has no attribute '{attr}'")
        specs = obj() if callable(obj) else obj
        if not all(isinstance(s, StageSpec) for s in specs):
            raise PipelineError(f"stage source '{source}': expected a list of StageSpec")
        return cls.of(specs)

    def get(self, name: str) -> StageSpec:
        if name not in self.names:
            raise PipelineError(f"unknown stage '{name}' (stages: {', '.join(self.names)})")
        if name not in self._specs:
            try:
                spec = self._load(name)
            except Exception as e:  # an unwritten or broken stage module is an error, not a skip
                raise PipelineError(f"stage '{name}' could not be loaded: {type(e).__name__}: {e}") from e
            if spec.name != name:
                raise PipelineError(f"stage '{name}' loaded a spec named '{spec.name}'")
            self._specs[name] = spec
        return self._specs[name]


# ----------------------------------------------------------------------------------------
# What to run
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlannedStage:
    spec: StageSpec
    key: str
    config: dict[str, Any]  # the normalized config slice that went into the key
    upstream_keys: dict[str, str]
    cached: bool  # a complete output for this key existed when the plan was made
    forced: bool  # named by --rerun, or downstream of a stage that was

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def will_run(self) -> bool:
        return self.forced or not self.cached


@dataclass(frozen=True)
class Plan:
    stages: tuple[PlannedStage, ...]
    requested: tuple[str, ...]  # what the caller asked for; the rest are upstream dependencies

    def __iter__(self):
        return iter(self.stages)

    def __getitem__(self, name: str) -> PlannedStage:
        for p in self.stages:
            if p.name == name:
                return p
        raise KeyError(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.stages)


@dataclass(frozen=True)
class StageOutcome:
    name: str
    key: str
    out_dir: Path
    cached: bool  # reused from the store: nothing was computed this time
    seconds: float  # wall time this run (lookup time when cached)
    metrics: dict[str, float]  # the stage's headline metrics (from the manifest when cached)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "key": self.key,
            "out_dir": str(self.out_dir),
            "cached": self.cached,
            "seconds": round(self.seconds, 3),
            "metrics": dict(self.metrics),
        }


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
        stages = []
        for o in self.outcomes:
            stages.append({**o.to_dict(), "artifacts": self.artifacts(o.name)})
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
        }


# ----------------------------------------------------------------------------------------
# Running a stage in other processes (accelerate launch)
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AccelerateLauncher:
    """Runs a training stage as `accelerate launch ... -m alignpipe.stages.launch`.

    The child (alignpipe/stages/launch.py) receives:
        --stage NAME --config CONFIG_JSON --out DIR --inputs INPUTS_JSON --resume DIR
        --metrics-log FILE   main process appends {"step": int|null, "metrics": {...}} lines
        --result FILE        main process writes the headline metrics dict (JSON) at the end
    Step metrics are tailed from --metrics-log into this process's sink while the child runs.
    """

    num_processes: int
    config_file: Optional[str] = None
    accelerate: tuple[str, ...] = (sys.executable, "-m", "accelerate.commands.launch")
    module: str = "alignpipe.stages.launch"
    poll_s: float = 0.5

    @classmethod
    def from_config(cls, cfg: PipelineConfig) -> Optional["AccelerateLauncher"]:
        orch = cfg.orchestration
        if orch.num_processes <= 1:
            return None
        if orch.accelerate_config and not Path(orch.accelerate_config).is_file():
            raise PipelineError(f"orchestration.accelerate_config: {orch.accelerate_config}: file not found")
        return cls(orch.num_processes, orch.accelerate_config)

    def command(self, stage: str, ctx: StageContext, metrics_log: Path, result: Path) -> list[str]:
        cmd = [*self.accelerate, "--num_processes", str(self.num_processes)]
        if self.config_file:
            cmd += ["--config_file", str(self.config_file)]
        else:  # torchrun workers; without it accelerate starts a single process (it expects mpirun on CPU)
            cmd += ["--multi_gpu"]
        cmd += ["-m", self.module, "--stage", stage, "--config", ctx.cfg.model_dump_json()]
        cmd += ["--out", str(ctx.out_dir), "--inputs", json.dumps({k: str(v) for k, v in ctx.inputs.items()})]
        if ctx.resume_dir is not None:
            cmd += ["--resume", str(ctx.resume_dir)]
        cmd += ["--metrics-log", str(metrics_log), "--result", str(result)]
        return cmd

    def run(self, spec: StageSpec, ctx: StageContext) -> dict[str, float]:
        scratch = Path(tempfile.mkdtemp(prefix=f"alignpipe-{spec.name}-"))
        try:
            metrics_log, result = scratch / "metrics.jsonl", scratch / "result.json"
            metrics_log.touch()
            cmd = self.command(spec.name, ctx, metrics_log, result)
            log.info("launching %s on %d processes", spec.name, self.num_processes)
            rc = _run_streaming(cmd, metrics_log, ctx.sink, self.poll_s)
            if rc != 0:
                raise RuntimeError(f"accelerate launch of stage '{spec.name}' exited with code {rc}")
            if not result.exists():
                raise RuntimeError(f"accelerate launch of stage '{spec.name}' wrote no result file")
            return validate_metrics(spec.name, json.loads(result.read_text()))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def _forward_lines(fh, sink: MetricsSink, pending: str) -> str:
    """Forward every complete JSON line appended since the last read; keep a partial tail."""
    pending += fh.read()
    *lines, pending = pending.split("\n")
    for line in lines:
        if line.strip():
            event = json.loads(line)
            sink.log_metrics(event["metrics"], event.get("step"))
    return pending


def _run_streaming(cmd: list[str], metrics_log: Path, sink: MetricsSink, poll_s: float) -> int:
    proc = subprocess.Popen(cmd, start_new_session=True)  # own group: we stop the whole launch
    pending = ""
    try:
        with open(metrics_log) as fh:
            while proc.poll() is None:
                pending = _forward_lines(fh, sink, pending)
                time.sleep(poll_s)
            _forward_lines(fh, sink, pending + "\n")
        return proc.returncode
    except BaseException:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        raise


# ----------------------------------------------------------------------------------------
# Progress
# ----------------------------------------------------------------------------------------
def _fmt_metrics(metrics: Mapping[str, float], limit: int = 4) -> str:
    items = list(metrics.items())
    text = "  ".join(f"{k}={v:.4g}" for k, v in items[:limit])
    return text + (f"  (+{len(items) - limit})" if len(items) > limit else "")


class Reporter(Protocol):
    def started(self, planned: PlannedStage, index: int, total: int) -> None: ...

    def finished(self, outcome: StageOutcome) -> None: ...

    def failed(self, planned: PlannedStage, error: BaseException) -> None: ...


class ConsoleReporter:
    """One line when each stage starts and ends, so a long pipeline always shows where it is."""

    def __init__(self, console: Optional[Console] = None):
        self.console = console or Console(stderr=True)

    def started(self, planned: PlannedStage, index: int, total: int) -> None:
        what = "rerun (forced)" if planned.forced else ("cached" if planned.cached else "running")
        self.console.print(f"[bold][{index}/{total}][/bold] {planned.name} [dim]{planned.key[:12]}[/dim] {what}")

    def finished(self, outcome: StageOutcome) -> None:
        if outcome.cached:
            self.console.print(f"  [cyan]reused[/cyan] {outcome.name}  {_fmt_metrics(outcome.metrics)}")
        else:
            self.console.print(
                f"  [green]done[/green] {outcome.name} in {outcome.seconds:.1f}s  {_fmt_metrics(outcome.metrics)}"
            )

    def failed(self, planned: PlannedStage, error: BaseException) -> None:
        detail = str(error) or type(error).__name__  # KeyboardInterrupt has no message
        self.console.print(Text.assemble("  ", ("failed", "red"), f" {planned.name}: {detail}"), highlight=False)


class SilentReporter:
    def started(self, planned: PlannedStage, index: int, total: int) -> None:
        pass

    def finished(self, outcome: StageOutcome) -> None:
        pass

    def failed(self, planned: PlannedStage, error: BaseException) -> None:
        pass


# ----------------------------------------------------------------------------------------
# The runner
# ----------------------------------------------------------------------------------------
def _descendants(roots: Collection[str], specs: Mapping[str, StageSpec]) -> set[str]:
    out, frontier = set(roots), list(roots)
    while frontier:
        node = frontier.pop()
        for s in specs.values():
            if node in s.upstream and s.name not in out:
                out.add(s.name)
                frontier.append(s.name)
    return out


class Runner:
    """Plans and runs stages of one config against one store."""

    def __init__(
        self,
        cfg: PipelineConfig,
        catalog: Optional[StageCatalog] = None,
        store: Optional[StageStore] = None,
        launcher: Optional[AccelerateLauncher] = None,
        distributed_stages: Collection[str] = DISTRIBUTED_STAGES,
    ):
        self.cfg = cfg
        self.catalog = catalog or StageCatalog.default()
        self.store = store or StageStore(Path(cfg.run_dir) / "store")
        self.launcher = launcher if launcher is not None else AccelerateLauncher.from_config(cfg)
        self.distributed_stages = frozenset(distributed_stages)

    # -- planning --------------------------------------------------------------------------
    def _closure(self, targets: Sequence[str]) -> list[StageSpec]:
        """Targets plus everything upstream of them, topologically sorted (ties: catalog order)."""
        specs: dict[str, StageSpec] = {}
        frontier = list(targets)
        while frontier:
            name = frontier.pop()
            if name in specs:
                continue
            spec = self.catalog.get(name)
            for up in spec.upstream:
                if up not in self.catalog.names:
                    raise PipelineError(f"stage '{name}' depends on unknown stage '{up}'")
            specs[name] = spec
            frontier.extend(spec.upstream)
        order = {n: i for i, n in enumerate(self.catalog.names)}
        done: list[StageSpec] = []
        placed: set[str] = set()
        remaining = sorted(specs.values(), key=lambda s: order[s.name])
        while remaining:
            ready = [s for s in remaining if all(u in placed for u in s.upstream)]
            if not ready:
                raise PipelineError(f"stage dependencies form a cycle among: {', '.join(s.name for s in remaining)}")
            done.append(ready[0])
            placed.add(ready[0].name)
            remaining.remove(ready[0])
        return done

    def plan(self, stages: Optional[Sequence[str]] = None, rerun: Iterable[str] = ()) -> Plan:
        """Stages to run (default: all) with their upstream, keys, and what is already cached.

        `rerun` forces those stages and everything downstream of them within this plan.
        """
        requested = tuple(stages) if stages else self.catalog.names
        for name in requested:
            self.catalog.get(name)  # unknown or unloadable -> PipelineError
        ordered = self._closure(requested)
        by_name = {s.name: s for s in ordered}
        rerun = set(rerun)
        for name in sorted(rerun):
            if name not in self.catalog.names:
                raise PipelineError(f"rerun '{name}': unknown stage (stages: {', '.join(self.catalog.names)})")
            if name not in by_name:
                raise PipelineError(f"rerun '{name}': not part of this run (running: {', '.join(by_name)})")
        forced = _descendants(rerun, by_name)

        keys: dict[str, str] = {}
        planned: list[PlannedStage] = []
        for spec in ordered:
            try:
                config = json.loads(canonical_json(spec.config_slice(self.cfg)))
            except TypeError as e:
                raise PipelineError(f"stage '{spec.name}': {e}") from None
            upstream_keys = {u: keys[u] for u in spec.upstream}
            key = stage_key(spec.name, spec.version, config, upstream_keys)
            keys[spec.name] = key
            cached = self.store.lookup(spec.name, key) is not None
            planned.append(PlannedStage(spec, key, config, upstream_keys, cached, spec.name in forced))
        return Plan(tuple(planned), requested)

    # -- running one stage -----------------------------------------------------------------
    def _inputs(self, planned: PlannedStage) -> dict[str, Path]:
        inputs = {}
        for up, key in planned.upstream_keys.items():
            if self.store.lookup(up, key) is None:
                raise PipelineError(
                    f"stage '{planned.name}' needs the output of '{up}' ({key[:16]}), which is not in the store"
                )
            inputs[up] = self.store.output_dir(up, key)
        return inputs

    def _uses_launcher(self, spec: StageSpec) -> bool:
        return self.launcher is not None and spec.name in self.distributed_stages

    def run_stage(self, planned: PlannedStage, sink: Optional[MetricsSink] = None) -> StageOutcome:
        """Reuse the stage's output if its key is in the store (unless forced), else compute it."""
        spec = planned.spec
        sink = sink or NullSink()
        inputs = self._inputs(planned)

        def compute(out_dir: Path, resume_dir: Path) -> Mapping[str, Any]:
            ctx = StageContext(self.cfg, out_dir, inputs, sink, resume_dir)
            if self._uses_launcher(spec):
                return self.launcher.run(spec, ctx)
            return spec.run(ctx)

        started = time.perf_counter()
        try:
            built = self.store.build(
                spec.name,
                planned.key,
                version=spec.version,
                config=planned.config,
                upstream=planned.upstream_keys,
                compute=compute,
                force=planned.forced,
            )
        except Exception as e:
            raise StageFailed.from_error(spec.name, e) from e
        return StageOutcome(
            name=spec.name,
            key=planned.key,
            out_dir=built.out_dir,
            cached=built.cached,
            seconds=time.perf_counter() - started,
            metrics=dict(built.manifest.metrics),
        )

    # -- running a plan --------------------------------------------------------------------
    def run(
        self,
        plan: Plan,
        execute: Optional[Callable[[PlannedStage], StageOutcome]] = None,
        reporter: Optional[Reporter] = None,
    ) -> PipelineResult:
        """Execute the plan in order. `execute` defaults to run_stage; wrappers add tracking etc."""
        execute = execute or self.run_stage
        reporter = reporter or ConsoleReporter()
        result = PipelineResult(plan)
        started = time.perf_counter()
        total = len(plan.stages)
        for i, planned in enumerate(plan.stages, 1):
            reporter.started(planned, i, total)
            try:
                outcome = execute(planned)
            except BaseException as e:
                reporter.failed(planned, e)
                raise
            reporter.finished(outcome)
            result.outcomes.append(outcome)
        result.seconds = time.perf_counter() - started
        return result
