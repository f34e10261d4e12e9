"""No setting is silently ignored: every field of the config schema is read by code that runs.

The whole tiny pipeline runs through the real Prefect flow with every config read recorded
(pipeline_config/reads.py), then the branches the demo does not take are run for real (a local
data file with a column map, the OpenAI judge against a local server, the local judge, pairs
labelled by a judge). A field that no code reads fails the test, by name. Reads that only copy a
value into a stage's slice or hash it into a key do not count; a stage reading its slice does.
"""
from __future__ import annotations

import shutil
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from pipeline_config import load_config
from pipeline_config.reads import recording
from pipeline_config.schema import JudgeConfig, PipelineConfig
from pipeline_config.slices import StageConfig
from tiny_pipeline import tiny_pipeline_config

pytestmark = pytest.mark.slow


def schema_fields(model: type[BaseModel], seen: set | None = None) -> set[tuple[str, str]]:
    """(class name, field) for every field of the schema, nested models included."""
    seen = set() if seen is None else seen
    if model in seen:
        return set()
    seen.add(model)
    out = set()
    for name, field in model.model_fields.items():
        out.add((model.__name__, name))
        for t in (field.annotation, *typing.get_args(field.annotation)):
            if isinstance(t, type) and issubclass(t, BaseModel):
                out |= schema_fields(t, seen)
    return out


def _field_at(path: str) -> list[tuple[str, str]]:
    """The (class, field) pairs a dotted PipelineConfig path passes through."""
    model, out = PipelineConfig, []
    for part in path.split("."):
        out.append((model.__name__, part))
        ann = model.model_fields[part].annotation
        model = next((t for t in (ann, *typing.get_args(ann)) if isinstance(t, type) and issubclass(t, BaseModel)), None)
        if model is None:
            break
    return out


def _stage_slices() -> dict[str, type[StageConfig]]:
    from alignpipe.stages import all_stages

    return {spec.config.__name__: spec.config for spec in all_stages()}


def as_schema_reads(reads: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """Reads of a stage slice's field count as reads of the config value it comes from."""
    slices = _stage_slices()
    out = set()
    for cls, name in reads:
        if cls in slices:
            out.update(_field_at(slices[cls].sources()[name]))
        else:
            out.add((cls, name))
    return out


def _exercise_branches(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The code paths the demo does not take, each run for real (OPENAI_API_KEY is set by the caller)."""
    from alignpipe.data import human_pairs, sft_examples
    from alignpipe.judge import Comparison, make_judge
    from alignpipe.stages.base import StageContext
    from alignpipe.stages.pairs_stage import SPEC as PAIRS
    from fake_openai_server import FakeOpenAIServer

    # task local: a CSV whose columns are named differently, mapped with data.column_map
    csv = tmp_path / "local.csv"
    csv.write_text("question,good,bad\n" + "".join(f"q{i}?,yes {i},no {i}\n" for i in range(12)))
    local = load_config("demo", overrides=["data.task=local", f"data.local_path={csv}", "data.eval_size=2",
                                            "data.column_map={prompt: question, chosen: good, rejected: bad}"]).data  # fmt: skip
    assert len(sft_examples(local, 4)) == 4 and len(human_pairs(local, 4)) == 4

    # the OpenAI judge, against a local OpenAI-compatible server
    items = [Comparison("SUBREDDIT: r/a\n\nTITLE: t\n\nPOST: p\n\nTL;DR:", "policy GOOD", "baseline")]
    with FakeOpenAIServer() as server:
        cfg = JudgeConfig(backend="openai", model="judge-model", base_url=server.base_url, concurrency=2, max_retries=1,
                          timeout_s=5, price_per_1k_input=1.0, price_per_1k_output=2.0)  # fmt: skip
        assert make_judge(cfg, tmp_path / "openai-cache").judge(items).win_rate == 1.0
    # the local judge: an HF causal LM's odds of "A" vs "B"
    assert make_judge(JudgeConfig(backend="local", local_model=str(tiny_model_dir)), tmp_path / "local-cache").judge(items).n_valid == 1

    # pairs labelled by a judge (pairs.judge), sampling from an SFT model directory
    sft_dir = tmp_path / "sft-out"
    shutil.copytree(tiny_model_dir, sft_dir / "model")
    cfg = load_config("demo", overrides=["data.prompt_size=2", "data.eval_size=2", "pairs.samples_per_prompt=2",
                                          "pairs.generation.max_new_tokens=4", "pairs.labeler=judge",
                                          "pairs.judge={backend: reward, reward: vader}"])  # fmt: skip
    out = tmp_path / "pairs-out"
    out.mkdir()
    try:
        PAIRS.run(StageContext(PAIRS.config.of(cfg), out, {"sft": sft_dir}))
    except ValueError as e:  # two 4-token samples from a random model may tie: no pairs is a fine outcome here
        assert "no preference pairs were produced" in str(e)


def test_every_config_field_is_read_by_code_that_runs(tmp_path, tiny_model_dir, ephemeral_prefect, monkeypatch):
    from flows.pipeline import alignpipe_pipeline

    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    cfg = load_config(path=tiny_pipeline_config(tmp_path, tiny_model_dir))
    with recording() as reads:
        summary = alignpipe_pipeline(config=cfg.model_dump(mode="json"))
        _exercise_branches(tmp_path, tiny_model_dir)
    assert summary["executed"]
    unread = schema_fields(PipelineConfig) - as_schema_reads(reads)
    assert not unread, f"config fields that no code read: {sorted(f'{c}.{f}' for c, f in unread)}"
