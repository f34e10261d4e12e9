"""Planning a pipeline run: which stages, their config slices, their cache keys, what is cached.

A stage's key covers its code (the import closure's fingerprint), its config slice, the content of
what it reads from outside the store, and its upstream keys. Planning also runs each to-be-run
stage's preflight (reading and validating its data), so bad input fails here, in one line, before
any model loads. Pure Python: no Prefect, no MLflow.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Iterable, Mapping, Optional, Sequence

from alignpipe.cache import StageStore, canonical_json, stage_key
from alignpipe.fingerprint import code_fingerprint
from alignpipe.inputs import DigestIndex, slice_inputs
from alignpipe.stages.base import StageSpec
from pipeline_config.schema import PipelineConfig
from pipeline_config.slices import StageConfig

DIGEST_INDEX = ".digests.json"


class PipelineError(ValueError):
    """A one-line, user-facing error about what to run or its inputs (unknown stage, bad --rerun,
    a data file that does not validate, a missing model)."""


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


@dataclass(frozen=True)
class PlannedStage:
    spec: StageSpec
    key: str
    config: StageConfig  # the slice: all the stage sees of the pipeline config
    code: str  # code fingerprint
    code_modules: tuple[str, ...]
    inputs: dict[str, str]  # what it reads outside the store: digests and hub revisions
    upstream_keys: dict[str, str]
    cached: bool  # a complete output for this key existed when the plan was made
    forced: bool  # named by --rerun, or downstream of a stage that was

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def will_run(self) -> bool:
        return self.forced or not self.cached

    def config_json(self) -> dict[str, Any]:
        return json.loads(canonical_json(self.config.model_dump(mode="json")))


@dataclass(frozen=True)
class Plan:
    stages: tuple[PlannedStage, ...]
    requested: tuple[str, ...]  # what the caller asked for; the rest are upstream dependencies
    store: StageStore

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


def _descendants(roots: Collection[str], specs: Mapping[str, StageSpec]) -> set[str]:
    out, frontier = set(roots), list(roots)
    while frontier:
        node = frontier.pop()
        for s in specs.values():
            if node in s.upstream and s.name not in out:
                out.add(s.name)
                frontier.append(s.name)
    return out


def closure(catalog: StageCatalog, targets: Sequence[str]) -> list[StageSpec]:
    """Targets plus everything upstream of them, topologically sorted (ties: catalog order)."""
    specs: dict[str, StageSpec] = {}
    frontier = list(targets)
    while frontier:
        name = frontier.pop()
        if name in specs:
            continue
        spec = catalog.get(name)
        for up in spec.upstream:
            if up not in catalog.names:
                raise PipelineError(f"stage '{name}' depends on unknown stage '{up}'")
        specs[name] = spec
        frontier.extend(spec.upstream)
    order = {n: i for i, n in enumerate(catalog.names)}
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


def store_for(cfg: PipelineConfig) -> StageStore:
    return StageStore(Path(cfg.run_dir) / "store")


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def plan_pipeline(
    cfg: PipelineConfig,
    targets: Optional[Sequence[str]] = None,
    rerun: Iterable[str] = (),
    *,
    catalog: Optional[StageCatalog] = None,
    store: Optional[StageStore] = None,
    preflight: bool = True,
) -> Plan:
    """Stages to run (default: all) with their upstream, keys, and what is already cached.

    `rerun` forces those stages and everything downstream of them within this plan. Raises
    PipelineError (one line) for unknown stages, unreadable inputs and data that does not validate.
    """
    catalog = catalog or StageCatalog.default()
    store = store or store_for(cfg)
    requested = tuple(targets) if targets else catalog.names
    for name in requested:
        catalog.get(name)  # unknown or unloadable -> PipelineError
    ordered = closure(catalog, requested)
    by_name = {s.name: s for s in ordered}
    rerun = set(rerun)
    for name in sorted(rerun):
        if name not in catalog.names:
            raise PipelineError(f"--rerun {name}: unknown stage (stages: {', '.join(catalog.names)})")
        if name not in by_name:
            raise PipelineError(f"--rerun {name}: not part of this run (running: {', '.join(by_name)})")
    forced = _descendants(rerun, by_name)

    index = DigestIndex(store.root / DIGEST_INDEX)
    keys: dict[str, str] = {}
    planned: list[PlannedStage] = []
    for spec in ordered:
        config = spec.config.of(cfg)
        try:
            inputs = slice_inputs(config, index)
        except (OSError, ValueError, RuntimeError) as e:
            raise PipelineError(f"stage '{spec.name}': {_one_line(e)}") from None
        code = code_fingerprint(spec.module)
        upstream_keys = {u: keys[u] for u in spec.upstream}
        key = stage_key(spec.name, code.digest, config.model_dump(mode="json"), inputs, upstream_keys)
        keys[spec.name] = key
        cached = store.lookup(spec.name, key) is not None
        planned.append(PlannedStage(spec, key, config, code.digest, code.modules, inputs, upstream_keys, cached, spec.name in forced))
    index.save()
    plan = Plan(tuple(planned), requested, store)
    if preflight:
        check_inputs(plan)
    return plan


def check_inputs(plan: Plan) -> None:
    """Every stage that will run reads and validates its data now, before any model is loaded."""
    for p in plan:
        if p.will_run and p.spec.preflight is not None:
            try:
                p.spec.preflight(p.config)
            except (OSError, ValueError, RuntimeError) as e:
                raise PipelineError(_one_line(e)) from None
