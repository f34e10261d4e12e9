"""Every preset validates, and the paper presets' own code paths run on a tiny model.

TL;DR and HH exercise what the demo does not: human pairs, reference-text / chosen-reply
baselines, the TL;DR-format OOD prompt, and a model-based judge (the `local` backend, standing
in for GPT-4, which cannot be reached from CI). Real samples come from ../shared/data.
"""
from __future__ import annotations

import json

import pytest

from pipeline_config import load_config, preset_names

pytestmark = pytest.mark.slow


def test_every_preset_validates():
    names = preset_names()
    assert {"demo", "imdb", "tldr", "hh"} <= set(names)
    assert load_config("tldr").dpo.beta == 0.5 and load_config("hh").dpo.beta == 0.1
    for name in ("imdb", "tldr", "hh"):  # the paper's DPO hyperparameters
        d = load_config(name).dpo
        assert (d.lr, d.batch_size, d.optimizer, d.warmup_steps) == (1e-6, 64, "rmsprop", 150)


def _tiny(preset: str, run_dir, model_dir, data_dir):
    judge = ["backend=local", f"local_model={model_dir}"]
    return load_config(
        preset,
        overrides=[
            f"run_dir={run_dir}", f"model.name_or_path={model_dir}", f"data.dir={data_dir}",
            "data.sft_size=16", "data.prompt_size=16", "data.eval_size=4",
            "sft.batch_size=8", "sft.micro_batch_size=4", "sft.max_length=256", "sft.max_prompt_length=192",
            "dpo.batch_size=8", "dpo.micro_batch_size=4", "dpo.max_length=256", "dpo.max_prompt_length=192", "dpo.warmup_steps=1",
            "evaluate.n_prompts=4", "evaluate.temperatures=[0.0, 1.0]", "evaluate.generation.max_new_tokens=8",
            "ood.n_articles=3", "ood.generation.max_new_tokens=8", "ood.article_chars=400",
            *[f"evaluate.judge.{j}" for j in judge], *[f"ood.judge.{j}" for j in judge],
        ],
    )  # fmt: skip


@pytest.mark.parametrize("preset, baseline", [("tldr", "reference_text"), ("hh", "chosen")])
def test_paper_preset_runs_end_to_end_on_a_tiny_model(preset, baseline, tmp_path, tiny_model_dir, shared_data):
    from alignpipe.pipeline import run_pipeline

    result = run_pipeline(_tiny(preset, tmp_path / "run", tiny_model_dir, shared_data))
    outcomes = {o.name: o for o in result.outcomes}
    assert outcomes["pairs"].metrics["pairs"] > 0
    assert outcomes["reference"].metrics["pairs"] == outcomes["pairs"].metrics["pairs"]
    rows = json.loads((outcomes["evaluate"].out_dir / "win_rates.json").read_text())
    assert [(r["baseline"], r["temperature"]) for r in rows] == [(baseline, 0.0), (baseline, 1.0)]
    assert all(r["n_valid"] + r["n_invalid"] == 4 for r in rows)
    ood = json.loads((outcomes["ood"].out_dir / "win_rates.json").read_text())
    assert [(r["temperature"], r["paper_dpo"], r["paper_ppo"]) for r in ood] == [(0.0, 0.36, 0.26), (0.25, 0.31, 0.23)]
    samples = [json.loads(line) for line in (outcomes["ood"].out_dir / "samples.jsonl").read_text().splitlines()]
    assert all(s["prompt"].startswith("SUBREDDIT: r/news") and s["prompt"].endswith("TL;DR:") for s in samples)
    assert "Table 1" in (outcomes["report"].out_dir / "report.md").read_text()
