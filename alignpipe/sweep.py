"""Sweeps: one pipeline per grid point, run as one graph so shared stages are computed once.

    alignpipe sweep --preset demo --grid dpo.beta=0.05,0.1,0.5 --grid dpo.loss_type=sigmoid,ipo

The grid is the cartesian product of the `--grid KEY=V1,V2,...` lists, each point a config (the
base config plus that point's overrides), validated before anything runs. Points that differ only
downstream of a stage share that stage's key (changing dpo.beta leaves sft, pairs and reference
alone), so it runs once and every member reuses it. Pure Python: the Prefect flow is flows/sweep.py.
"""
from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from alignpipe.pipeline import ConsoleReporter, Dispatcher, Elsewhere, Member, PipelineResult, run_pipelines
from alignpipe.plan import Plan, plan_pipeline
from pipeline_config.loading import ConfigError, load_config, parse_override
from pipeline_config.schema import PipelineConfig


@dataclass(frozen=True)
class GridAxis:
    key: str  # dotted config path, e.g. dpo.beta
    values: tuple[Any, ...]  # parsed as YAML scalars, as --set does


def parse_grid(items: Sequence[str]) -> list[GridAxis]:
    """`KEY=V1,V2,...` per item -> axes; one-line ConfigError for a malformed or empty axis."""
    if not items:
        raise ConfigError("--grid: give at least one, e.g. --grid dpo.beta=0.05,0.1,0.5")
    axes: list[GridAxis] = []
    for item in items:
        key, raw = item.split("=", 1) if "=" in item else (item, None)
        key = key.strip()
        if raw is None or not raw.strip():
            raise ConfigError(f"--grid {item}: expected KEY=V1,V2,..., e.g. dpo.beta=0.05,0.1,0.5")
        values = [parse_override(f"{key}={v}")[1] for v in raw.split(",")]
        if any(v in ("", None) for v in values):
            raise ConfigError(f"--grid {item}: empty value in the list")
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"--grid {item}: a value is listed twice")
        if any(a.key == key for a in axes):
            raise ConfigError(f"--grid {key}: given twice; put all its values in one --grid")
        axes.append(GridAxis(key, tuple(values)))
    return axes


def _as_override(key: str, value: Any) -> str:
    import json

    return f"{key}={json.dumps(value) if isinstance(value, (list, dict)) else value}"


@dataclass(frozen=True)
class GridPoint:
    values: tuple[tuple[str, Any], ...]  # (key, value) per axis

    @property
    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.values)

    def overrides(self) -> list[str]:
        return [_as_override(k, v) for k, v in self.values]


def grid_points(axes: Sequence[GridAxis]) -> list[GridPoint]:
    return [GridPoint(tuple(zip([a.key for a in axes], combo))) for combo in itertools.product(*(a.values for a in axes))]


def member_configs(
    preset: Optional[str], path: Optional[str | Path], overrides: Iterable[str], axes: Sequence[GridAxis]
) -> list[tuple[GridPoint, PipelineConfig]]:
    """Every grid point's validated config; a bad value fails in one line naming the point."""
    out = []
    for point in grid_points(axes):
        try:
            out.append((point, load_config(preset, path, [*overrides, *point.overrides()])))
        except ConfigError as e:
            raise ConfigError(f"--grid {point.label}: {e}") from None
    return out


def sweep_id(plans: Sequence[Plan]) -> str:
    """Names the sweep by what it computes: the report keys of its members, in order."""
    return hashlib.sha256("".join(p["report"].key for p in plans).encode()).hexdigest()[:16]


@dataclass
class SweepResult:
    sweep_id: str
    points: list[GridPoint]
    results: list[PipelineResult]
    report_dir: Optional[Path] = None


def plan_members(members: Sequence[tuple[GridPoint, PipelineConfig]], rerun: Sequence[str] = ()) -> list[Plan]:
    return [plan_pipeline(cfg, None, rerun) for _, cfg in members]


def run_sweep(
    members: Sequence[tuple[GridPoint, PipelineConfig]],
    plans: Sequence[Plan],
    trackers: Sequence,
    *,
    dispatcher: Optional[Dispatcher] = None,
    reporter: Optional[ConsoleReporter] = None,
    elsewhere: Optional[Elsewhere] = None,
) -> SweepResult:
    """Run every member as one graph, then write the sweep report beside the store."""
    from alignpipe.sweep_report import write_sweep_report

    results = run_pipelines(
        [Member(cfg, plan, tracker, point.label) for (point, cfg), plan, tracker in zip(members, plans, trackers)],
        dispatcher=dispatcher, reporter=reporter, elsewhere=elsewhere,
    )  # fmt: skip
    sid = sweep_id(plans)
    report_dir = Path(members[0][1].run_dir) / "sweeps" / sid
    write_sweep_report(report_dir, [p for p, _ in members], results)
    return SweepResult(sid, [p for p, _ in members], results, report_dir)
