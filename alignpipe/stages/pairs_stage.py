"""Preference pairs: sampled from the SFT model and labelled by a scorer or judge, or imported human pairs."""
from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

from alignpipe.data import generation_prompts, human_pairs
from alignpipe.generate import generate
from alignpipe.pairs import PairStats, pairs_from_scores
from alignpipe.stages.base import StageContext, StageSpec
from alignpipe.stages.common import load_stage_model, write_jsonl
from alignpipe.stages.tables import write_parquet

SENTIMENT_TASKS = ("imdb",)  # the scorer reads the whole review (prompt + continuation)


def config_slice(cfg) -> dict:
    s = {"data": cfg.data.model_dump(), "pairs": cfg.pairs.model_dump(), "seed": cfg.seed}
    if cfg.pairs.source == "sampled" and cfg.pairs.labeler == "judge":
        s["judge"] = cfg.evaluate.judge.model_dump()
    return s


def scored_text(task: str, prompt: str, completion: str) -> str:
    return prompt + completion if task in SENTIMENT_TASKS else completion


def judge_scores(judge, prompts: list[str], completions: list[list[str]]) -> list[list[float]]:
    """Copeland scores: for each prompt, how many of its other samples the judge prefers each sample to.
    All comparisons go to the judge in one call, so its concurrency and cache work across prompts."""
    from alignpipe.judge import Comparison

    plan = [(p, i, j) for p, comps in enumerate(completions) for i, j in combinations(range(len(comps)), 2)]
    items = [Comparison(prompt=prompts[p], policy=completions[p][i], baseline=completions[p][j]) for p, i, j in plan]
    result = judge.judge(items, desc="labelling")
    wins = [[0.0] * len(c) for c in completions]
    for (p, i, j), w in zip(plan, result.item_wins):  # item_wins: one per item, both_orders averaged
        if w is not None:
            wins[p][i] += w
            wins[p][j] += 1 - w
    return wins


def run_sampled(ctx: StageContext) -> tuple[list[dict], list[dict], PairStats, dict[str, float]]:
    cfg, pcfg = ctx.cfg, ctx.cfg.pairs
    prompts = generation_prompts(cfg.data, "train", cfg.data.prompt_size)
    model, tok = load_stage_model(ctx.inputs["sft"], cfg.model)
    k = pcfg.samples_per_prompt
    expanded = [p["prompt"] for p in prompts for _ in range(k)]
    gcfg = pcfg.generation
    gen = generate(
        model, tok, expanded, max_new_tokens=gcfg.max_new_tokens, temperature=gcfg.temperature,
        top_p=gcfg.top_p, batch_size=gcfg.batch_size, seed=cfg.seed, desc="sampling pairs",
    )  # fmt: skip
    del model
    stats = PairStats()
    rows, samples = [], []
    grouped = [gen.texts[i * k : (i + 1) * k] for i in range(len(prompts))]
    if pcfg.labeler == "judge":
        from alignpipe.judge import make_judge

        judge = make_judge(cfg.evaluate.judge, ctx.out_dir.parent / ".judge-cache")
        per_prompt = judge_scores(judge, [p["prompt"] for p in prompts], grouped)
    else:
        from alignpipe.rewards import make_scorer

        flat = make_scorer(pcfg.labeler, pcfg.labeler_model).score([scored_text(cfg.data.task, p, c) for p, c in zip(expanded, gen.texts)])
        per_prompt = [flat[i * k : (i + 1) * k] for i in range(len(prompts))]
    for i, p in enumerate(prompts):
        comps, scores = grouped[i], per_prompt[i]
        samples += [{"prompt_index": i, "prompt": p["prompt"], "completion": c, "score": s} for c, s in zip(comps, scores)]
        rows += pairs_from_scores(p["prompt"], comps, scores, pairing=pcfg.pairing, min_margin=pcfg.min_margin, stats=stats, prompt_index=i)
    sample_scores = [s["score"] for s in samples]
    extra = {"generation_tokens_per_s": gen.tokens_per_s, "sample_score_mean": sum(sample_scores) / len(sample_scores)}
    return rows, samples, stats, extra


def run_human(ctx: StageContext) -> tuple[list[dict], list[dict], PairStats, dict[str, float]]:
    records = human_pairs(ctx.cfg.data, ctx.cfg.data.prompt_size)
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
    source = ctx.cfg.pairs.source
    rows, samples, stats, extra = (run_sampled if source == "sampled" else run_human)(ctx)
    if not rows:
        raise ValueError(f"pairs: no preference pairs were produced ({stats.ties} ties); check pairs.min_margin and the labeler")
    for r in rows:
        r["source"] = source if source == "human" else f"sampled/{ctx.cfg.pairs.labeler}"
    write_parquet(ctx.out_dir / "pairs.parquet", rows)
    if samples:
        write_jsonl(ctx.out_dir / "samples.jsonl", samples)
    metrics = {**stats.as_metrics(), **extra}
    (ctx.out_dir / "stats.json").write_text(json.dumps({**metrics, "margin_histogram": stats.margin_histogram()}, indent=2))
    return metrics


def read_pairs(stage_dir: Path) -> list[dict]:
    from alignpipe.stages.tables import read_parquet

    return read_parquet(stage_dir / "pairs.parquet")


SPEC = StageSpec(
    name="pairs",
    upstream=("sft",),
    version="1",
    config_slice=config_slice,
    run=run,
    artifacts=("stats.json", "samples.jsonl"),
    uses_gpu=True,
)
