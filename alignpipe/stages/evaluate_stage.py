"""In-distribution evaluation: DPO policy vs baselines on held-out prompts, per temperature."""
from __future__ import annotations

import json
from functools import partial

from alignpipe.data import generation_prompts
from alignpipe.evaluation import evaluate_policy
from alignpipe.judge import make_judge
from alignpipe.kl import sequence_kl
from alignpipe.stages.base import StageContext, StageSpec
from alignpipe.stages.common import load_stage_model, write_jsonl
from alignpipe.stages.pairs_stage import scored_text
from alignpipe.stages.tables import write_parquet

EVAL_DATA_FIELDS = ("task", "dir", "builtin_fallback", "local_path", "column_map", "eval_size", "prefix_tokens", "seed")


def config_slice(cfg) -> dict:
    return {
        "evaluate": cfg.evaluate.model_dump(),
        "data": {k: getattr(cfg.data, k) for k in EVAL_DATA_FIELDS},
        "dtype": cfg.model.dtype,
        "seed": cfg.seed,
    }


def judge_cache_dir(ctx: StageContext):
    """Shared by every run of this stage: a verdict is never paid for twice, even across configs."""
    return ctx.out_dir.parent / ".judge-cache"


EVAL_ARTIFACTS = ("samples.jsonl", "verdicts.parquet", "win_rates.json", "reward_kl.json", "metrics.json")


def write_tables(ctx: StageContext, tables) -> dict[str, float]:
    """Samples, verdicts and win-rate/reward tables to the stage directory; returns the headline metrics."""
    metrics = tables.metrics()
    write_jsonl(ctx.out_dir / "samples.jsonl", tables.samples)
    if tables.verdicts:
        write_parquet(ctx.out_dir / "verdicts.parquet", tables.verdicts)
    (ctx.out_dir / "win_rates.json").write_text(json.dumps(tables.win_rates, indent=2))
    (ctx.out_dir / "reward_kl.json").write_text(json.dumps(tables.reward_kl, indent=2))
    (ctx.out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def judge_and_tabulate(ctx: StageContext, prompts: list[dict], *, temperatures, baselines, generation, judge_cfg, compute_kl: bool = False):
    """Load the DPO and SFT policies, sample, judge and tabulate: shared by evaluate and OOD."""
    cfg = ctx.cfg
    policy, tok = load_stage_model(ctx.inputs["dpo"], cfg.model)
    sft, _ = load_stage_model(ctx.inputs["sft"], cfg.model)
    return evaluate_policy(
        policy=policy,
        sft=sft,
        tokenizer=tok,
        prompts=prompts,
        temperatures=temperatures,
        baselines=baselines,
        generation=generation,
        judge=make_judge(judge_cfg, judge_cache_dir(ctx)),
        judged_text=partial(scored_text, cfg.data.task) if judge_cfg.backend == "reward" else (lambda p, c: c),
        seed=cfg.seed,
        compute_kl=compute_kl,
        kl_fn=lambda prompts_, samples: sequence_kl(policy, sft, tok, prompts_, samples, batch_size=generation.batch_size),
    )


def run(ctx: StageContext) -> dict[str, float]:
    ecfg = ctx.cfg.evaluate
    prompts = generation_prompts(ctx.cfg.data, "eval", ecfg.n_prompts)
    tables = judge_and_tabulate(
        ctx, prompts, temperatures=ecfg.temperatures, baselines=ecfg.baselines, generation=ecfg.generation,
        judge_cfg=ecfg.judge, compute_kl=ecfg.compute_kl,
    )  # fmt: skip
    return write_tables(ctx, tables)


SPEC = StageSpec(
    name="evaluate",
    upstream=("sft", "dpo"),
    version="1",
    config_slice=config_slice,
    run=run,
    artifacts=EVAL_ARTIFACTS,
    uses_gpu=True,
)
