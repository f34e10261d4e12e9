"""The report: plots and a Markdown summary built from every upstream stage's outputs."""
from __future__ import annotations

import json
from pathlib import Path

from alignpipe.report import ReportInputs, RunInfo, read_history, write_report
from alignpipe.stages.base import StageContext, StageSpec

UPSTREAM = ("sft", "pairs", "reference", "dpo", "evaluate", "ood")


def config_slice(cfg) -> dict:
    return {"preset": cfg.preset, "model": cfg.model.name_or_path}


def _json(path: Path, default):
    return json.loads(path.read_text()) if path.exists() else default


def _judge_name(jcfg) -> str:
    if jcfg.backend == "reward":
        return f"reward:{jcfg.reward_model or jcfg.reward}"
    if jcfg.backend == "local":
        return f"local:{jcfg.local_model}"
    return f"openai:{jcfg.model}"


def run(ctx: StageContext) -> dict[str, float]:
    cfg = ctx.cfg
    stages = []
    for name in UPSTREAM:
        manifest = _json(ctx.inputs[name] / "manifest.json", {})
        stages.append({"name": name, "key": manifest.get("key", ctx.inputs[name].name), "built": manifest.get("created"), "seconds": manifest.get("seconds")})
    d = cfg.dpo
    run_info = RunInfo(
        preset=cfg.preset,
        model=cfg.model.name_or_path if not cfg.model.gguf_file else f"{cfg.model.name_or_path}/{cfg.model.gguf_file}",
        hyperparameters={
            "loss_type": d.loss_type, "beta": d.beta, "lr": d.lr, "optimizer": d.optimizer, "batch_size": d.batch_size,
            "warmup_steps": d.warmup_steps, "lora": d.lora.r if d.lora else "full", "sft_weight": d.sft_weight,
            "pairs": f"{cfg.pairs.source}/{cfg.pairs.labeler}", "task": cfg.data.task,
        },  # fmt: skip
        stages=stages,
        judge=_judge_name(cfg.evaluate.judge),
        total_seconds=sum(s["seconds"] or 0.0 for s in stages),
    )
    ood_rewards = {r["temperature"]: r["mean_reward"] for r in _json(ctx.inputs["ood"] / "reward_kl.json", []) if r["policy"] == "dpo"}
    ood_rows = [
        {k: r[k] for k in ("temperature", "baseline", "win_rate", "stderr", "n_valid")} | {"mean_reward": ood_rewards.get(r["temperature"])}
        for r in _json(ctx.inputs["ood"] / "win_rates.json", [])
    ]
    inputs = ReportInputs(
        run=run_info,
        sft_history=read_history(ctx.inputs["sft"] / "history.jsonl"),
        dpo_history=read_history(ctx.inputs["dpo"] / "history.jsonl"),
        win_rates=_json(ctx.inputs["evaluate"] / "win_rates.json", []),
        reward_kl=_json(ctx.inputs["evaluate"] / "reward_kl.json", []),
        ood=ood_rows,
    )
    files = write_report(ctx.out_dir, inputs)
    return {"files": float(len(files))}


SPEC = StageSpec(
    name="report",
    upstream=UPSTREAM,
    version="1",
    config_slice=config_slice,
    run=run,
    artifacts=("report.md", "win_rate_vs_temperature.png", "reward_vs_kl.png", "training_dpo.png", "training_sft.png", "ood_vs_paper.png"),
)
