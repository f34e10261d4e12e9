"""What a pipeline stage is: a pure function of (its config slice, its upstream outputs) -> a directory.

A stage sees only its own slice (a StageConfig, see pipeline_config/slices.py), never the whole
config, so its cache key covers what it reads by construction. The orchestration layer (store,
Prefect, MLflow) only ever sees StageSpec and StageContext, so every stage also runs on a bare GPU
box without Prefect or MLflow installed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Protocol

from pipeline_config.slices import StageConfig


class MetricsSink(Protocol):
    """Where a stage reports progress. MLflow implements it in the orchestration layer."""

    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None: ...


class NullSink:
    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        pass


@dataclass
class StageContext:
    config: StageConfig  # this stage's slice, and nothing else of the pipeline config
    out_dir: Path  # an empty staging directory; the store publishes it atomically when run() returns
    inputs: dict[str, Path]  # upstream stage name -> that stage's published output directory
    sink: MetricsSink = field(default_factory=NullSink)
    resume_dir: Optional[Path] = None  # a stable per-key scratch directory for training checkpoints
    say: Callable[[str], None] = print  # one line for the console (e.g. "dpo: resumed from step 10 of 30")


@dataclass(frozen=True)
class StageSpec:
    name: str
    upstream: tuple[str, ...]
    config: type[StageConfig]  # the slice this stage reads; its canonical JSON is part of the key
    run: Callable[[StageContext], dict[str, float]]  # writes into ctx.out_dir, returns headline metrics
    artifacts: tuple[str, ...] = ()  # files under out_dir worth attaching to the tracking run
    uses_gpu: bool = False
    # Reads and validates the data the stage will need, before anything expensive: the plan calls it
    # for every stage that is going to run, so a bad data file fails before any model loads.
    preflight: Optional[Callable[[StageConfig], None]] = None

    @property
    def module(self) -> str:
        """The module whose code (with every alignpipe module it imports) is part of the key."""
        return self.run.__module__
