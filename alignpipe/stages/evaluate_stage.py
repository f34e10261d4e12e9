"""Evaluation: the DPO policy against baselines, per temperature, judged; one implementation, two stages.

`evaluate` samples held-out prompts of the task; `ood` samples CNN/DailyMail articles (the paper's
out-of-distribution test, Table 1). Both then run the same protocol (alignpipe.evaluation): sample
the DPO policy and the SFT model at each temperature, judge against each baseline, tabulate.
"""
from __future__ import annotations

from functools import partial
from typing import Annotated, Literal

from alignpipe.data import generation_prompts, ood_prompts
from alignpipe.evaluation import evaluate_policy
from alignpipe.judge import make_judge
from alignpipe.judge.factory import check_judge
from alignpipe.kl import sequence_kl
from alignpipe.report import PAPER_TABLE1
from alignpipe.rewards import scored_text
from alignpipe.data.provenance import source_of, task_dataset
from alignpipe.stages.artifacts import EVAL_FILES, content_digest, dataset_record, write_datasets, write_eval_tables
from alignpipe.stages.base import StageContext, StageSpec
from alignpipe.stages.common import load_stage_model
from pipeline_config.schema import DataConfig, EvaluateConfig, EvaluationConfig, OODConfig
from pipeline_config.slices import From, StageConfig

Dtype = Literal["auto", "float32", "bfloat16"]


class EvaluateSlice(StageConfig):
    evaluate: Annotated[EvaluateConfig, From("evaluate")]
    data: Annotated[DataConfig, From("data")]
    chat_template: Annotated[bool, From("model.chat_template")]
    dtype: Annotated[Dtype, From("model.dtype")]
    seed: Annotated[int, From("seed")]

    def protocol(self) -> EvaluationConfig:
        return self.evaluate

    def prompts(self) -> list[dict]:
        return generation_prompts(self.data, "eval", self.evaluate.n_prompts)


class OODSlice(StageConfig):
    ood: Annotated[OODConfig, From("ood")]
    data: Annotated[DataConfig, From("data")]
    chat_template: Annotated[bool, From("model.chat_template")]
    dtype: Annotated[Dtype, From("model.dtype")]
    seed: Annotated[int, From("seed")]

    def protocol(self) -> EvaluationConfig:
        return self.ood

    def prompts(self) -> list[dict]:
        return ood_prompts(self.data, self.ood.n_articles, self.ood.article_chars)


def preflight(config: EvaluateSlice | OODSlice) -> None:
    check_judge(config.protocol().judge, f"{'evaluate' if isinstance(config, EvaluateSlice) else 'ood'}.judge")
    config.prompts()


def paper_table1_applies(protocol: EvaluationConfig, baseline: str) -> bool:
    """The paper's Table 1 is an LLM judge's win rate of summaries against the reference highlights:
    only rows measured that way sit beside it."""
    return protocol.judge.backend != "reward" and protocol.judge.template == "news" and baseline == "reference_text"


def run(ctx: StageContext) -> dict[str, float]:
    config: EvaluateSlice | OODSlice = ctx.config
    protocol = config.protocol()
    policy, tok = load_stage_model(ctx.inputs["dpo"], config.dtype)
    sft, _ = load_stage_model(ctx.inputs["sft"], config.dtype)
    judge = protocol.judge
    prompts = config.prompts()
    tables = evaluate_policy(
        policy=policy,
        sft=sft,
        tokenizer=tok,
        prompts=prompts,
        temperatures=protocol.temperatures,
        baselines=protocol.baselines,
        generation=protocol.generation,
        judge=make_judge(judge, ctx.out_dir.parent / ".judge-cache"),  # shared by all runs: never pay twice
        judged_text=partial(scored_text, config.data.task) if judge.backend == "reward" else (lambda p, c: c),
        seed=config.seed,
        chat_template=config.chat_template,
        compute_kl=protocol.compute_kl,
        kl_fn=lambda prompts_, samples: sequence_kl(
            policy, sft, tok, prompts_, samples, batch_size=protocol.generation.batch_size, chat_template=config.chat_template
        ),
    )
    for row in tables.win_rates:
        if paper_table1_applies(protocol, row["baseline"]):
            for method, by_t in PAPER_TABLE1.items():
                if row["temperature"] in by_t:
                    row[f"paper_{method.lower()}"] = by_t[row["temperature"]]
    metrics = tables.metrics()
    write_eval_tables(ctx.out_dir, tables, metrics)
    name = "eval-prompts" if isinstance(config, EvaluateSlice) else "ood-prompts"
    source, kind = source_of(config.data, task_dataset(config.data) if isinstance(config, EvaluateSlice) else "cnn_dailymail")
    write_datasets(ctx.out_dir, [dataset_record(name, content_digest(prompts), source, len(prompts), "evaluation", kind)])
    return metrics


EVALUATE = StageSpec(
    name="evaluate", upstream=("sft", "dpo"), config=EvaluateSlice, run=run, artifacts=EVAL_FILES, uses_gpu=True, preflight=preflight
)
OOD = StageSpec(
    name="ood", upstream=("sft", "dpo"), config=OODSlice, run=run, artifacts=EVAL_FILES, uses_gpu=True, preflight=preflight
)
