"""Test doubles for the orchestration layer: seven tiny stages shaped like the real pipeline.

Same names, same dependency graph and the same kind of config slices as alignpipe.stages, but
each one just writes a small file derived from its inputs. Every execution appends the stage
name to <run_dir>/calls.log, an independent witness of what actually ran.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Collection

from alignpipe.stages.base import StageContext, StageSpec
from pipeline_config.schema import PipelineConfig


def _record_call(ctx: StageContext, name: str) -> None:
    with open(Path(ctx.cfg.run_dir) / "calls.log", "a") as fh:
        fh.write(name + "\n")


def _read_inputs(ctx: StageContext) -> dict[str, str]:
    """Each stage reads its upstream's payload, so a missing or wrong input fails the test."""
    return {name: (path / "payload.json").read_text() for name, path in ctx.inputs.items()}


def _make_stage(name: str, upstream: tuple[str, ...], slice_fn, fail: Collection[str], artifacts=(), uses_gpu=False):
    def run(ctx: StageContext) -> dict[str, float]:
        _record_call(ctx, name)
        inputs = _read_inputs(ctx)
        if name in fail:
            (ctx.out_dir / "partial.bin").write_bytes(b"half-written")
            raise RuntimeError(f"{name} exploded on purpose")
        config = slice_fn(ctx.cfg)
        (ctx.out_dir / "payload.json").write_text(json.dumps({"stage": name, "config": config, "inputs": sorted(inputs)}))
        metrics = {"n_inputs": float(len(inputs))}
        if name == "dpo":
            for step in range(3):
                ctx.sink.log_metrics({"train/loss": 1.0 / (step + 1)}, step)
            metrics["beta_seen"] = ctx.cfg.dpo.beta
        if name == "evaluate":
            (ctx.out_dir / "win_rates.json").write_text(json.dumps({"0.0": 0.6}))
            metrics["win_rate"] = 0.6
        if name == "report":
            (ctx.out_dir / "report.md").write_text("# report\n")
        return metrics

    return StageSpec(
        name=name, upstream=upstream, version="1", config_slice=slice_fn, run=run, artifacts=tuple(artifacts), uses_gpu=uses_gpu
    )


def _dump(model) -> dict:
    return model.model_dump(mode="json")


def make_specs(fail: Collection[str] = ()) -> list[StageSpec]:
    """The fake pipeline; stages named in `fail` raise after writing part of their output."""
    return [
        _make_stage("sft", (), lambda c: {"model": _dump(c.model), "data": _dump(c.data), "sft": _dump(c.sft)}, fail, uses_gpu=True),
        _make_stage("pairs", ("sft",), lambda c: {"pairs": _dump(c.pairs), "data.seed": c.data.seed}, fail, uses_gpu=True),
        _make_stage("reference", ("sft", "pairs"), lambda c: {"reference": _dump(c.reference)}, fail, uses_gpu=True),
        _make_stage("dpo", ("sft", "pairs", "reference"), lambda c: {"dpo": _dump(c.dpo)}, fail, uses_gpu=True),
        _make_stage("evaluate", ("sft", "dpo"), lambda c: {"evaluate": _dump(c.evaluate)}, fail, artifacts=("win_rates.json",)),
        _make_stage("ood", ("dpo",), lambda c: {"ood": _dump(c.ood)}, fail),
        _make_stage("report", ("evaluate", "ood"), lambda c: {}, fail, artifacts=("report.md",)),
    ]


# For StageCatalog.from_source("stage_doubles:SPECS") (the flow's stage_source parameter).
SPECS = make_specs()
ORDER = [s.name for s in SPECS]


def calls(cfg: PipelineConfig) -> list[str]:
    path = Path(cfg.run_dir) / "calls.log"
    return path.read_text().split() if path.exists() else []


def tiny_config(run_dir: Path, **overrides) -> PipelineConfig:
    """A valid config rooted at run_dir with its own sqlite tracking store."""
    data = {"run_dir": str(run_dir), "tracking": {"tracking_uri": f"sqlite:///{run_dir / 'mlflow.db'}"}}
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return PipelineConfig.model_validate(data)


def failing_dpo() -> list[StageSpec]:
    """For StageCatalog.from_source("stage_doubles:failing_dpo")."""
    return make_specs(fail={"dpo"})
