"""What a pipeline stage is: a pure function of (its config slice, its upstream outputs) -> a directory.

The orchestration layer (cache, Prefect tasks, MLflow) only ever sees StageSpec and StageContext,
so every stage can also run on a bare GPU box without Prefect or MLflow installed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Protocol

from pipeline_config.schema import PipelineConfig


class MetricsSink(Protocol):
    """Where a stage reports progress. MLflow implements it in the orchestration layer."""

    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None: ...


class NullSink:
    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        pass


@dataclass
class StageContext:
    cfg: PipelineConfig
    out_dir: Path  # an empty staging directory; the cache publishes it atomically when run() returns
    inputs: dict[str, Path]  # upstream stage name -> that stage's published output directory
    sink: MetricsSink = field(default_factory=NullSink)
    resume_dir: Optional[Path] = None  # a stable per-key scratch directory for training checkpoints


@dataclass(frozen=True)
class StageSpec:
    name: str
    upstream: tuple[str, ...]
    version: str  # bump when the stage's code changes its output; part of the cache key
    config_slice: Callable[[PipelineConfig], dict[str, Any]]  # only what this stage's output depends on
    run: Callable[[StageContext], dict[str, float]]  # writes into ctx.out_dir, returns headline metrics
    artifacts: tuple[str, ...] = ()  # files under out_dir worth attaching to the tracking run
    uses_gpu: bool = False
