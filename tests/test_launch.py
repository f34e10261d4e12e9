"""Training stages under `accelerate launch --num_processes 2` (CPU, gloo), driven by the runner.

This runs alignpipe/stages/launch.py for real: every process trains, rank 0 publishes, step
metrics stream back to the parent's sink and the result matches the stage's usual outputs.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


class RecordingSink:
    def __init__(self):
        self.events = []

    def log_metrics(self, metrics, step=None):
        self.events.append((step, dict(metrics)))


@pytest.mark.parametrize("accelerate_config", [None, "infra/accelerate/fsdp.yaml"], ids=["ddp", "fsdp"])
def test_sft_and_dpo_run_on_two_processes(tmp_path, tiny_model_dir, monkeypatch, accelerate_config):
    """DDP (no config file: torchrun workers) and FSDP2 (the shipped fsdp.yaml, as is): the demo's
    LoRA SFT (evaluated after training) and DPO, each published by rank 0 as a plain model."""
    from transformers import AutoModelForCausalLM

    from alignpipe.pipeline import launcher_for, run_stage
    from alignpipe.plan import plan_pipeline
    from pipeline_config import load_config

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(REPO)  # accelerate_config paths are relative to the repository root
    extra = [f"orchestration.accelerate_config={accelerate_config}"] if accelerate_config else []
    cfg = load_config(
        "demo",
        overrides=[
            *extra,
            f"run_dir={tmp_path / 'run'}", f"model.name_or_path={tiny_model_dir}", "orchestration.num_processes=2",
            "data.sft_size=16", "data.prompt_size=6", "data.eval_size=6", "sft.batch_size=8", "sft.micro_batch_size=4",
            "pairs.pairing=all", "pairs.generation.max_new_tokens=8", "dpo.batch_size=8", "dpo.micro_batch_size=4", "dpo.epochs=1",
        ],
    )  # fmt: skip
    launcher = launcher_for(cfg)
    assert launcher is not None and launcher.num_processes == 2
    plan = plan_pipeline(cfg, ["dpo"])
    sinks = {}
    for planned in plan:
        sinks[planned.spec.name] = RecordingSink()
        outcome = run_stage(planned, plan.store, sink=sinks[planned.spec.name], launcher=launcher)
        assert not outcome.cached
    dpo_dir = next((tmp_path / "run" / "store" / "dpo").glob("*/manifest.json")).parent
    history = [json.loads(line) for line in (dpo_dir / "history.jsonl").read_text().splitlines()]
    assert history and history[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference at step 0
    assert {h["processes"] for h in history} == {2}
    assert {h["fsdp"] for h in history} == {1.0 if accelerate_config else 0.0}  # sharded only with fsdp.yaml
    assert (dpo_dir / "model" / "model.safetensors").exists()
    sft_dir = next((tmp_path / "run" / "store" / "sft").glob("*/manifest.json")).parent
    assert "eval_loss" in json.loads((sft_dir / "metrics.json").read_text())
    for stage_dir in (sft_dir, dpo_dir):
        published = AutoModelForCausalLM.from_pretrained(str(stage_dir / "model"))
        assert not any("lora" in n for n, _ in published.named_parameters())
    steps = [step for step, m in sinks["dpo"].events if "dpo/loss" in m]
    assert steps == list(range(1, len(history) + 1))  # streamed from the child processes, once each
