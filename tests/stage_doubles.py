"""Test doubles for the orchestration layer: seven tiny stages shaped like the real pipeline.

Same names, same dependency graph and the same kind of config slices as alignpipe.stages, but
each one just writes a small file derived from its inputs. Every execution appends the stage
name to <run_dir>/calls.log, an independent witness of what actually ran. `use_doubles` puts them
in place of the real stages for code that asks for the default catalog (the CLI, the flow).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Collection

import pytest

from alignpipe.plan import StageCatalog
from alignpipe.stages.base import StageContext, StageSpec
from pipeline_config.schema import DataConfig, DPOConfig, EvaluateConfig, ModelConfig, OODConfig, PairsConfig, PipelineConfig, ReferenceConfig, SFTConfig
from pipeline_config.slices import From, StageConfig


class SFTFake(StageConfig):
    model: Annotated[ModelConfig, From("model")]
    data: Annotated[DataConfig, From("data")]
    sft: Annotated[SFTConfig, From("sft")]
    run_dir: Annotated[str, From("run_dir")]  # where calls.log goes (the fakes only)


class PairsFake(StageConfig):
    pairs: Annotated[PairsConfig, From("pairs")]
    data_seed: Annotated[int, From("data.seed")]
    run_dir: Annotated[str, From("run_dir")]


class ReferenceFake(StageConfig):
    reference: Annotated[ReferenceConfig, From("reference")]
    run_dir: Annotated[str, From("run_dir")]


class DPOFake(StageConfig):
    dpo: Annotated[DPOConfig, From("dpo")]
    run_dir: Annotated[str, From("run_dir")]


class EvaluateFake(StageConfig):
    evaluate: Annotated[EvaluateConfig, From("evaluate")]
    run_dir: Annotated[str, From("run_dir")]


class OODFake(StageConfig):
    ood: Annotated[OODConfig, From("ood")]
    run_dir: Annotated[str, From("run_dir")]


class ReportFake(StageConfig):
    run_dir: Annotated[str, From("run_dir")]


def _record_call(ctx: StageContext, name: str) -> None:
    with open(Path(ctx.config.run_dir) / "calls.log", "a") as fh:
        fh.write(name + "\n")


def _read_inputs(ctx: StageContext) -> dict[str, str]:
    """Each stage reads its upstream's payload, so a missing or wrong input fails the test."""
    return {name: (path / "payload.json").read_text() for name, path in ctx.inputs.items()}


def _meet(ctx: StageContext, name: str, others: Collection[str], timeout_s: float = 30.0) -> None:
    """Wait until every stage in `others` has started too: only stages that run concurrently get past."""
    run_dir = Path(ctx.config.run_dir)
    (run_dir / f"started-{name}").touch()
    deadline = time.monotonic() + timeout_s
    while not all((run_dir / f"started-{o}").exists() for o in others):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} never met {sorted(others)}: they did not run concurrently")
        time.sleep(0.05)


def _make_stage(name: str, upstream: tuple[str, ...], config: type[StageConfig], fail: Collection[str], artifacts=(), uses_gpu=False,
                meet: Collection[str] = (), flaky: Collection[str] = (), meet_betas: Collection[float] = ()):  # fmt: skip
    def run(ctx: StageContext) -> dict[str, float]:
        _record_call(ctx, name)
        inputs = _read_inputs(ctx)
        if name in meet:
            _meet(ctx, name, set(meet) - {name})
        if name == "dpo" and ctx.config.dpo.beta in meet_betas:  # sweep members' dpo stages, concurrently
            _meet(ctx, f"dpo-{ctx.config.dpo.beta}", {f"dpo-{b}" for b in meet_betas} - {f"dpo-{ctx.config.dpo.beta}"})
        flaked = Path(ctx.config.run_dir) / f"flaked-{name}"
        if name in flaky and not flaked.exists():
            flaked.touch()
            raise RuntimeError(f"{name} failed once, as flaky endpoints do")
        if name in fail:
            (ctx.out_dir / "partial.bin").write_bytes(b"half-written")
            raise RuntimeError(f"{name} exploded on purpose")
        (ctx.out_dir / "payload.json").write_text(json.dumps({"stage": name, "config": ctx.config.model_dump(mode="json"), "inputs": sorted(inputs)}))
        metrics = {"n_inputs": float(len(inputs))}
        if name == "dpo":
            for step in range(3):
                ctx.sink.log_metrics({"train/loss": 1.0 / (step + 1)}, step)
            metrics["beta_seen"] = ctx.config.dpo.beta
        if name == "evaluate":
            row = {"temperature": 0.0, "baseline": "sft", "win_rate": 0.6, "stderr": 0.1, "n_valid": 10, "n_invalid": 0}
            (ctx.out_dir / "win_rates.json").write_text(json.dumps([row]))
            metrics["win_rate"] = 0.6
        if name == "report":
            (ctx.out_dir / "report.md").write_text("# report\n")
        return metrics

    run.__module__ = __name__
    return StageSpec(name=name, upstream=upstream, config=config, run=run, artifacts=tuple(artifacts), uses_gpu=uses_gpu)


def make_specs(fail: Collection[str] = (), meet: Collection[str] = (), flaky: Collection[str] = (), meet_betas: Collection[float] = ()) -> list[StageSpec]:
    """The fake pipeline; stages named in `fail` raise after writing part of their output, stages
    named in `meet` wait for each other (they fail unless they run at the same time), stages named
    in `flaky` fail on their first attempt in a run_dir only."""
    return [
        _make_stage("sft", (), SFTFake, fail, uses_gpu=True),
        _make_stage("pairs", ("sft",), PairsFake, fail, uses_gpu=True),
        _make_stage("reference", ("sft", "pairs"), ReferenceFake, fail, uses_gpu=True),
        _make_stage("dpo", ("sft", "reference"), DPOFake, fail, uses_gpu=True, meet_betas=meet_betas),
        _make_stage("evaluate", ("sft", "dpo"), EvaluateFake, fail, artifacts=("win_rates.json",), meet=meet, flaky=flaky),
        _make_stage("ood", ("dpo",), OODFake, fail, meet=meet, flaky=flaky),
        _make_stage("report", ("evaluate", "ood"), ReportFake, fail, artifacts=("report.md",)),
    ]


SPECS = make_specs()
ORDER = [s.name for s in SPECS]


def catalog(fail: Collection[str] = (), meet: Collection[str] = (), flaky: Collection[str] = (), meet_betas: Collection[float] = ()) -> StageCatalog:
    return StageCatalog.of(make_specs(fail, meet, flaky, meet_betas))


def use_doubles(monkeypatch: pytest.MonkeyPatch, fail: Collection[str] = (), meet: Collection[str] = (), flaky: Collection[str] = (),
                meet_betas: Collection[float] = ()) -> None:  # fmt: skip
    """Make the default catalog (what the CLI and the flow plan with) the doubles."""
    monkeypatch.setattr(StageCatalog, "default", classmethod(lambda cls: catalog(fail, meet, flaky, meet_betas)))


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
