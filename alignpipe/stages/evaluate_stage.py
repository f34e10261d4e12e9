"""Evaluation: the DPO policy against baselines, per temperature, judged; one implementation, two stages.

`evaluate` samples held-out prompts of the task (its test split where it has one); `ood` samples
CNN/DailyMail test articles (the paper's out-of-distribution test, Table 1). Both then run the same
protocol (alignpipe.evaluation) on prompts that were first checked against every training text (the
SFT examples' prompts and whole completions, and the prompts of the pairs DPO trained on): a prompt
equal to one of them, or cut from a text equal to one (an IMDb review SFT saw), is removed and counted.
`evaluate` also checks its judge against human labels when asked, and puts intermediate DPO
checkpoints on the reward/KL frontier (`evaluate.checkpoints`), and the best-of-N baseline too when
its picker is the evaluation's own reward (an oracle, at its analytic KL bound).

Models are loaded with the fp32 weights training saved and sample under the training autocast
(`model.dtype`); the KL is scored in fp32 from those weights (alignpipe.kl), whatever the dtype.
Every judgment either judge makes (win rates, the human-agreement check, the best-of-N ranking) is
counted in `judge/*` metrics, in total and per purpose.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from alignpipe.data import generation_prompts, human_label_pairs, sft_examples, task_split, validate_task_data
from alignpipe.data.tasks import ood_prompts_from
from alignpipe.data.overlap import split_overlaps
from alignpipe.evaluation import ExtraPolicy, evaluate_policy
from alignpipe.data.provenance import eval_source_of, source_of
from alignpipe.judge import make_judge
from alignpipe.judge.agreement import human_agreement
from alignpipe.judge.factory import check_judge
from alignpipe.judge.usage import merged
from alignpipe.report import PAPER_TABLE1
from alignpipe.rewards import scored_text
from alignpipe.stages.artifacts import (
    EVAL_FILES, content_digest, dataset_record, read_history, read_pairs, read_snapshots, write_datasets, write_eval_tables,
)
from alignpipe.stages.base import StageContext, StageSpec
from alignpipe.stages.common import load_stage_model
from pipeline_config.schema import DataConfig, EvaluateConfig, EvaluationConfig, JudgeConfig, OODConfig, PairsConfig
from pipeline_config.slices import From, StageConfig

Dtype = Literal["auto", "float32", "bfloat16"]
WEIGHTS_DTYPE = "float32"  # what evaluation loads: the weights as trained (model.dtype sets the sampling autocast)
SUMMARIZATION_TASKS = ("tldr",)  # policies trained to summarize: the only ones the paper's Table 1 is about


class EvaluateSlice(StageConfig):
    evaluate: Annotated[EvaluateConfig, From("evaluate")]
    data: Annotated[DataConfig, From("data")]
    pairs: Annotated[PairsConfig, From("pairs")]  # its labeller picks the best-of-N baseline
    chat_template: Annotated[bool, From("model.chat_template")]
    dtype: Annotated[Dtype, From("model.dtype")]
    seed: Annotated[int, From("seed")]

    def protocol(self) -> EvaluationConfig:
        return self.evaluate

    def prompts(self, tokenizer) -> tuple[list[dict], str]:
        return generation_prompts(self.data, "eval", self.evaluate.n_prompts, tokenizer), task_split(self.data).eval_source


class OODSlice(StageConfig):
    ood: Annotated[OODConfig, From("ood")]
    data: Annotated[DataConfig, From("data")]
    chat_template: Annotated[bool, From("model.chat_template")]
    dtype: Annotated[Dtype, From("model.dtype")]
    seed: Annotated[int, From("seed")]

    def protocol(self) -> EvaluationConfig:
        return self.ood

    def prompts(self, tokenizer=None) -> tuple[list[dict], str]:
        return ood_prompts_from(self.data, self.ood.n_articles, self.ood.article_chars)


def preflight(config: EvaluateSlice | OODSlice) -> None:
    """The judges (key, model, classifier) and the prompts, checked before any model loads."""
    if isinstance(config, OODSlice):
        check_judge(config.ood.judge, "ood.judge")
        config.prompts()
        return
    check_judge(config.evaluate.judge, "evaluate.judge")
    if "best_of_n" in config.evaluate.baselines and config.pairs.labeler == "judge":
        check_judge(config.pairs.judge, "pairs.judge")
    validate_task_data(config.data)
    if config.evaluate.human_agreement:
        human_label_pairs(config.data, config.evaluate.human_agreement)


def paper_table1_applies(protocol: EvaluationConfig, baseline: str, task: str) -> bool:
    """The paper's Table 1 is GPT-4's win rate of a TL;DR-trained policy's summaries of CNN/DailyMail
    articles against their reference highlights: only rows measured that way (a summarization
    policy, an LLM judge with the news prompt, the highlights as baseline) sit beside it."""
    return (task in SUMMARIZATION_TASKS and protocol.judge.backend != "reward" and protocol.judge.template == "news"
            and baseline == "reference_text")  # fmt: skip


def training_texts(config: EvaluateSlice | OODSlice, pairs_dir: Path) -> list[str]:
    """Every text the policy was trained on as a whole: the SFT examples' prompts and completions
    (an IMDb SFT example is a whole review after an empty prompt) and the DPO pairs' prompts (as stored)."""
    sft = [text for ex in sft_examples(config.data, config.data.sft_size) for text in (ex["prompt"], ex["completion"])]
    return sft + [row["prompt"] for row in read_pairs(pairs_dir)]


def best_of_n_is_oracle(pairs: PairsConfig, judge: JudgeConfig) -> bool:
    """Whether the best-of-N picker (pairs.labeler) is the evaluation judge itself: the same reward
    model, or the same LLM judge. Then best-of-N is an oracle baseline, optimizing the very score
    it is measured by."""
    if pairs.labeler == "judge":
        return pairs.judge is not None and pairs.judge.model_dump(exclude={"concurrency", "max_retries", "timeout_s"}) == judge.model_dump(
            exclude={"concurrency", "max_retries", "timeout_s"})
    return judge.backend == "reward" and (pairs.labeler, pairs.labeler_model) == (judge.reward, judge.reward_model)


def labeller(pairs: PairsConfig, task: str, cache_dir: Path):
    """(picker, its judge or None): pairs.labeler as a best-of-N picker, (prompts, candidates per
    prompt) -> scores; the judge (labeler 'judge') is returned so its spend is counted."""
    if pairs.labeler == "judge":
        from alignpipe.judge.tournament import copeland_scores

        judge = make_judge(pairs.judge, cache_dir)
        return (lambda prompts, groups: copeland_scores(judge, prompts, groups, desc="best-of-N", purpose="best_of_n")), judge
    from alignpipe.rewards import make_scorer

    scorer = make_scorer(pairs.labeler, pairs.labeler_model)

    def score(prompts: list[str], groups: list[list[str]]) -> list[list[float]]:
        flat = scorer.score([scored_text(task, p, c) for p, group in zip(prompts, groups) for c in group])
        n = len(groups[0]) if groups else 0
        return [flat[i * n : (i + 1) * n] for i in range(len(groups))]

    return score, None


def checkpoint_policies(dpo_dir: Path, sft_dir: Path, every: int, dtype: str) -> list[ExtraPolicy]:
    """The DPO snapshots at every `every` steps, as frontier policies loaded one at a time."""
    snapshots = read_snapshots(dpo_dir)
    if every and snapshots is None:
        raise ValueError(f"evaluate.checkpoints: {dpo_dir} holds no DPO snapshots (was dpo run with evaluate.checkpoints set?)")
    if not every:
        return []
    return [ExtraPolicy(f"dpo@step{step}", step, partial(_snapshot_model, sft_dir, path, snapshots["lora"], dtype))
            for step, path in snapshots["steps"].items() if step % every == 0]


def _snapshot_model(sft_dir: Path, weights_path: Path, lora: Optional[dict[str, Any]], dtype: str):
    """The SFT model with a DPO snapshot's trainable weights loaded (LoRA adapters merged)."""
    from safetensors.torch import load_file

    from alignpipe.stages.common import apply_lora
    from pipeline_config.schema import LoraConfig

    model, _ = load_stage_model(sft_dir, dtype)  # evaluation passes "float32": the weights as trained
    if lora is not None:
        model = apply_lora(model, LoraConfig(**lora))
    weights = load_file(str(weights_path))
    result = model.load_state_dict(weights, strict=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad} if lora is not None else set(weights)
    if result.unexpected_keys or trainable - set(weights):
        raise ValueError(f"{weights_path}: does not fit the SFT model ({len(result.unexpected_keys)} unexpected keys)")
    if lora is not None:
        model = model.merge_and_unload()
    return model.eval()


def final_dpo_step(dpo_dir: Path) -> Optional[int]:
    history = read_history(dpo_dir)
    return int(history[-1]["step"]) if history else None


def run(ctx: StageContext) -> dict[str, float]:
    config: EvaluateSlice | OODSlice = ctx.config
    protocol = config.protocol()
    # the fp32 weights training saved: sampling runs under model.dtype's autocast, the KL in fp32
    policy, tok = load_stage_model(ctx.inputs["dpo"], WEIGHTS_DTYPE)
    sft, _ = load_stage_model(ctx.inputs["sft"], WEIGHTS_DTYPE)
    candidates, source = config.prompts(tok)
    prompts, removed = split_overlaps(candidates, training_texts(config, ctx.inputs["pairs"]))
    stage = "evaluate" if isinstance(config, EvaluateSlice) else "ood"
    if not prompts:
        raise ValueError(f"{stage}: all {len(candidates)} evaluation prompts are, or are cut from, a training text")
    if removed:
        ctx.say(f"{stage}: removed {len(removed)} of {len(candidates)} evaluation prompts that are, or are cut from, a training text")
    cache = ctx.out_dir.parent / ".judge-cache"  # shared by all runs of this stage: never pay twice
    judge = make_judge(protocol.judge, cache)
    is_evaluate = stage == "evaluate"
    picker, picker_judge = labeller(config.pairs, config.data.task, cache) if is_evaluate and "best_of_n" in protocol.baselines else (None, None)
    oracle = picker is not None and best_of_n_is_oracle(config.pairs, protocol.judge)  # best-of-N picked by the judge itself
    tables = evaluate_policy(
        policy=policy,
        sft=sft,
        tokenizer=tok,
        prompts=prompts,
        temperatures=protocol.temperatures,
        headline_temperature=protocol.headline_temperature,
        baselines=protocol.baselines,
        generation=protocol.generation,
        judge=judge,
        judged_text=partial(scored_text, config.data.task) if protocol.judge.backend == "reward" else (lambda p, c: c),
        seed=config.seed,
        chat_template=config.chat_template,
        compute_kl=protocol.compute_kl,
        samples_per_prompt=protocol.samples_per_prompt,
        best_of_n=config.evaluate.best_of_n if is_evaluate else 0,
        labeller=picker,
        best_of_n_oracle=oracle,
        policy_step=final_dpo_step(ctx.inputs["dpo"]),
        extra_policies=checkpoint_policies(ctx.inputs["dpo"], ctx.inputs["sft"], config.evaluate.checkpoints, WEIGHTS_DTYPE) if is_evaluate else (),
        precision=config.dtype,
    )
    if oracle:
        for row in (*tables.win_rates, *tables.reward_kl):  # the same oracle baseline in every table
            if row.get("baseline", row.get("policy")) == "best_of_n":
                row["oracle"] = True
    tables.data = {"eval_source": source, "candidate_prompts": len(candidates), "overlap_removed": len(removed), "prompts": len(prompts)}
    if is_evaluate and config.evaluate.human_agreement:
        pairs, where = human_label_pairs(config.data, config.evaluate.human_agreement)
        tables.judge_agreement = human_agreement(judge, pairs, source=where)
    tables.set_usage(merged([judge.usage] + ([picker_judge.usage] if picker_judge is not None else [])))  # every judgment
    for row in tables.win_rates:
        if paper_table1_applies(protocol, row["baseline"], config.data.task):
            for method, by_t in PAPER_TABLE1.items():
                if row["temperature"] in by_t:
                    row[f"paper_{method.lower()}"] = by_t[row["temperature"]]
    metrics = tables.metrics()
    write_eval_tables(ctx.out_dir, tables, metrics)
    where, kind = eval_source_of(config.data) if is_evaluate else source_of(config.data, "cnn_dailymail")
    write_datasets(ctx.out_dir, [dataset_record(f"{stage}-prompts", content_digest(prompts), where, len(prompts), "evaluation", kind)])
    return metrics


UPSTREAM = ("sft", "pairs", "dpo")
EVALUATE = StageSpec(
    name="evaluate", upstream=UPSTREAM, config=EvaluateSlice, run=run, artifacts=EVAL_FILES, uses_gpu=True, preflight=preflight
)
OOD = StageSpec(
    name="ood", upstream=UPSTREAM, config=OODSlice, run=run, artifacts=EVAL_FILES, uses_gpu=True, preflight=preflight
)
