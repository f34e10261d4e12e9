"""The report: plots and a Markdown summary built from every upstream stage's outputs.

What each output was computed from comes from its manifest (the config slice its key covers), not
from this stage's config: the report describes the outputs it was built from, exactly.
"""
from __future__ import annotations

from typing import Annotated

from alignpipe.report import FIGURES, ReportInputs, RunInfo, write_report
from alignpipe.stages.artifacts import read_eval_tables, read_history, read_manifest
from alignpipe.stages.base import StageContext, StageSpec
from pipeline_config.slices import From, StageConfig

UPSTREAM = ("sft", "pairs", "reference", "dpo", "evaluate", "ood")


class ReportSlice(StageConfig):
    preset: Annotated[str, From("preset")]


def judge_name(judge: dict) -> str:
    if judge["backend"] == "reward":
        return f"reward:{judge.get('reward_model') or judge['reward']}"
    if judge["backend"] == "local":
        return f"local:{judge['local_model']}"
    return f"openai:{judge['model']}"


BASELINE_WORDS = {"sft": "the SFT model's", "reference_text": "the reference highlights", "chosen": "the chosen reply",
                  "best_of_n": "the SFT best-of-N"}


def ood_description(config: dict, source: str | None = None) -> str:
    """What the OOD stage measured, in words, from its config slice and the articles' source as the
    stage recorded it (the file, hub split or built-in sample it read): the section says it, so a
    sentiment score of news continuations is never labelled as the paper's summarization test."""
    ood, task = config["ood"], config["data"]["task"]
    judge = judge_name(ood["judge"])
    against = " and ".join(BASELINE_WORDS.get(b, b) for b in ood["baselines"])
    cut = f" (first {ood['article_chars']} characters)" if ood.get("article_chars") else ""
    read = f", {source}" if source else ""
    if task == "imdb":
        scorer = f"sentiment ({judge})" if ood["judge"]["backend"] == "reward" else f"{judge} with the {ood['judge']['template']} prompt"
        return f"{scorer} of continuations of CNN/DailyMail article openings{cut}{read}, against {against}"
    return (f"summaries of CNN/DailyMail articles{cut}{read}, in the TL;DR format, judged by {judge} "
            f"({ood['judge']['template']} prompt) against {against}")


def run(ctx: StageContext) -> dict[str, float]:
    config: ReportSlice = ctx.config
    manifests = {name: read_manifest(ctx.inputs[name]) or {} for name in UPSTREAM}
    stages = [{"name": n, "key": m.get("key", ctx.inputs[n].name), "built": m.get("created"), "seconds": m.get("seconds")}
              for n, m in manifests.items()]  # fmt: skip
    sft_cfg, pairs_cfg = manifests["sft"]["config"], manifests["pairs"]["config"]
    d = manifests["dpo"]["config"]["dpo"]
    model = sft_cfg["model"]
    run_info = RunInfo(
        preset=config.preset,
        model=model["name_or_path"] if not model["gguf_file"] else f"{model['name_or_path']}/{model['gguf_file']}",
        hyperparameters={
            "loss_type": d["loss_type"], "beta": d["beta"], "lr": d["lr"], "optimizer": d["optimizer"], "batch_size": d["batch_size"],
            "warmup_steps": d["warmup_steps"], "lora": d["lora"]["r"] if d["lora"] else "full", "sft_weight": d["sft_weight"],
            "pairs": f"{pairs_cfg['pairs']['source']}/{pairs_cfg['pairs']['labeler']}", "task": sft_cfg["data"]["task"],
        },  # fmt: skip
        stages=stages,
        judge=judge_name(manifests["evaluate"]["config"]["evaluate"]["judge"]),
        # the stored compute times of the outputs, summed: the report is cached, so it cannot hold the
        # wall time of the run that prints it (the CLI summary and MLflow's pipeline_seconds do)
        total_seconds=sum(s["seconds"] or 0.0 for s in stages),
    )
    evaluate, ood = read_eval_tables(ctx.inputs["evaluate"]), read_eval_tables(ctx.inputs["ood"])
    ood_rewards = {r["temperature"]: r["mean_reward"] for r in ood["reward_kl"] if r["policy"] == "dpo"}
    ood_rows = [{**r, "mean_reward": ood_rewards.get(r["temperature"])} for r in ood["win_rates"]]
    inputs = ReportInputs(
        run=run_info,
        sft_history=read_history(ctx.inputs["sft"]),
        dpo_history=read_history(ctx.inputs["dpo"]),
        win_rates=evaluate["win_rates"],
        reward_kl=evaluate["reward_kl"],
        frontier=evaluate["frontier"],
        data=evaluate["data"],
        judge_agreement=evaluate["judge_agreement"],
        ood=ood_rows,
        ood_data=ood["data"],
        ood_description=ood_description(manifests["ood"]["config"], ood["data"].get("eval_source")),
    )
    files = write_report(ctx.out_dir, inputs)
    return {"files": float(len(files))}


SPEC = StageSpec(
    name="report",
    upstream=UPSTREAM,
    config=ReportSlice,
    run=run,
    artifacts=("report.md", *FIGURES.values()),
)
