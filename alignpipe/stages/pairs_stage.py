"""Preference pairs: sampled from the SFT model and labelled by a scorer or judge, or imported human pairs."""
from __future__ import annotations

import json
from typing import Annotated, Literal

from alignpipe.data import generation_prompts, human_pairs, validate_task_data
from alignpipe.generate import generate
from alignpipe.pairs import PairStats, pairs_from_scores
from alignpipe.rewards import scored_text
from alignpipe.data.provenance import PAIRS_SOURCE, source_of
from alignpipe.stages.artifacts import dataset_record, file_digest, write_datasets, write_jsonl, write_pairs
from alignpipe.stages.base import StageContext, StageSpec
from alignpipe.stages.common import load_stage_model
from pipeline_config.schema import DataConfig, PairsConfig
from pipeline_config.slices import From, StageConfig


LABELLING = "pair_labelling"  # the judge's purpose here (alignpipe.judge.usage): judge/pair_labelling/* metrics


class PairsSlice(StageConfig):
    data: Annotated[DataConfig, From("data")]
    pairs: Annotated[PairsConfig, From("pairs")]
    chat_template: Annotated[bool, From("model.chat_template")]
    dtype: Annotated[Literal["auto", "float32", "bfloat16"], From("model.dtype")]
    seed: Annotated[int, From("seed")]


def preflight(config: PairsSlice) -> None:
    """The prompts (or human pairs) this stage will read, validated before any model loads."""
    if config.pairs.source == "sampled":
        if config.pairs.labeler == "judge":
            from alignpipe.judge.factory import check_judge

            check_judge(config.pairs.judge, "pairs.judge")
        validate_task_data(config.data)  # the prompts themselves need the SFT model's tokenizer (IMDb)
    else:
        human_pairs(config.data, config.data.prompt_size)


def run_sampled(ctx: StageContext) -> tuple[list[dict], list[dict], PairStats, dict[str, float]]:
    config: PairsSlice = ctx.config
    pcfg = config.pairs
    model, tok = load_stage_model(ctx.inputs["sft"], config.dtype)
    prompts = generation_prompts(config.data, "train", config.data.prompt_size, tok)
    k = pcfg.samples_per_prompt
    expanded = [p["prompt"] for p in prompts for _ in range(k)]
    gcfg = pcfg.generation
    gen = generate(
        model, tok, expanded, max_new_tokens=gcfg.max_new_tokens, temperature=gcfg.temperature,
        top_p=gcfg.top_p, batch_size=gcfg.batch_size, seed=config.seed, chat_template=config.chat_template,
        desc="sampling pairs",
    )  # fmt: skip
    del model
    stats = PairStats()
    rows, samples = [], []
    grouped = [gen.texts[i * k : (i + 1) * k] for i in range(len(prompts))]
    judge_metrics: dict[str, float] = {}
    if pcfg.labeler == "judge":
        from alignpipe.judge import make_judge
        from alignpipe.judge.tournament import copeland_scores
        from alignpipe.judge.usage import usage_metrics

        judge = make_judge(pcfg.judge, ctx.out_dir.parent / ".judge-cache")
        per_prompt = copeland_scores(judge, [p["prompt"] for p in prompts], grouped, desc="labelling pairs", purpose=LABELLING)
        judge_metrics = usage_metrics(judge.usage.by_purpose)  # a paid judge's labelling is in the stage's metrics, as evaluation's is
    else:
        from alignpipe.rewards import make_scorer

        texts = [scored_text(config.data.task, p, c) for p, c in zip(expanded, gen.texts)]
        flat = make_scorer(pcfg.labeler, pcfg.labeler_model).score(texts)
        per_prompt = [flat[i * k : (i + 1) * k] for i in range(len(prompts))]
    for i, p in enumerate(prompts):
        comps, scores = grouped[i], per_prompt[i]
        samples += [{"prompt_index": i, "prompt": p["prompt"], "completion": c, "score": s} for c, s in zip(comps, scores)]
        rows += pairs_from_scores(p["prompt"], comps, scores, pairing=pcfg.pairing, min_margin=pcfg.min_margin, stats=stats, prompt_index=i)
    sample_scores = [s["score"] for s in samples]
    extra = {"generation_tokens_per_s": gen.tokens_per_s, "sample_score_mean": sum(sample_scores) / len(sample_scores),
             **judge_metrics}
    return rows, samples, stats, extra


def run_human(ctx: StageContext) -> tuple[list[dict], list[dict], PairStats, dict[str, float]]:
    config: PairsSlice = ctx.config
    records = human_pairs(config.data, config.data.prompt_size)
    stats = PairStats(prompts=len({r["prompt"] for r in records}), samples=2 * len(records))
    rows = []
    for i, r in enumerate(records):
        if r["chosen"] == r["rejected"]:
            stats.ties += 1
            continue
        stats.pairs += 1
        rows.append({"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"], "prompt_index": i})
    return rows, [], stats, {}


def run(ctx: StageContext) -> dict[str, float]:
    config: PairsSlice = ctx.config
    source = config.pairs.source
    rows, samples, stats, extra = (run_sampled if source == "sampled" else run_human)(ctx)
    if not rows:
        raise ValueError(f"pairs: no preference pairs were produced ({stats.ties} ties); check pairs.min_margin and pairs.labeler")
    for r in rows:
        r["source"] = source if source == "human" else f"sampled/{config.pairs.labeler}"
    path = write_pairs(ctx.out_dir, rows)
    if source == "human":
        where, kind = source_of(config.data, PAIRS_SOURCE.get(config.data.task, "local"))
    else:
        where, kind = f"sampled from the SFT model, labelled by {config.pairs.labeler}", "stage"
    write_datasets(ctx.out_dir, [dataset_record("preference-pairs", file_digest(path), where, len(rows), "training", kind)])
    if samples:
        write_jsonl(ctx.out_dir / "samples.jsonl", samples)
    metrics = {**stats.as_metrics(), **extra}
    (ctx.out_dir / "stats.json").write_text(json.dumps({**metrics, "margin_histogram": stats.margin_histogram()}, indent=2))
    return metrics


SPEC = StageSpec(
    name="pairs",
    upstream=("sft",),
    config=PairsSlice,
    run=run,
    artifacts=("stats.json", "samples.jsonl"),
    uses_gpu=True,
    preflight=preflight,
)
