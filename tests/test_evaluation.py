"""Sequence KL and the win-rate evaluation loop on the tiny model with the offline reward judge."""
import math

import pytest
import torch

from alignpipe.evaluation import evaluate_policy
from alignpipe.judge import make_judge
from alignpipe.kl import sequence_kl
from alignpipe.models import load_causal_lm
from pipeline_config.schema import GenerationConfig, JudgeConfig

PROMPTS = ["The film was", "I watched it and", "Honestly the acting"]
COMPLETIONS = [" great fun", " fell asleep", " was superb and moving"]


def _perturbed(model_dir, scale=0.05):
    other = load_causal_lm(model_dir).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * scale)
    return other


def test_kl_of_a_model_with_itself_is_zero(tiny_model, smol_tokenizer):
    kl = sequence_kl(tiny_model, tiny_model, smol_tokenizer, PROMPTS, COMPLETIONS)
    assert kl == pytest.approx([0.0, 0.0, 0.0], abs=1e-5)


def test_kl_matches_the_full_distribution_sum(tiny_model, tiny_model_dir, smol_tokenizer):
    other = _perturbed(tiny_model_dir)
    kl = sequence_kl(tiny_model, other, smol_tokenizer, PROMPTS[:1], COMPLETIONS[:1])[0]
    prompt = smol_tokenizer(PROMPTS[0]).input_ids
    completion = smol_tokenizer(COMPLETIONS[0], add_special_tokens=False).input_ids + [smol_tokenizer.eos_token_id]
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        lp = tiny_model(ids).logits.float().log_softmax(-1)[0]
        lq = other(ids).logits.float().log_softmax(-1)[0]
    positions = range(len(prompt) - 1, len(prompt) + len(completion) - 1)
    expected = sum(float((lp[t].exp() * (lp[t] - lq[t])).sum()) for t in positions)
    assert kl == pytest.approx(expected, rel=1e-4) and kl > 0


def test_evaluation_reports_win_rates_rewards_and_kl(tiny_model, tiny_model_dir, smol_tokenizer, tmp_path):
    other = _perturbed(tiny_model_dir, scale=0.2)
    judge = make_judge(JudgeConfig(backend="reward", reward="vader"), tmp_path)
    prompts = [{"prompt": p, "reference": None} for p in PROMPTS]
    tables = evaluate_policy(
        policy=other, sft=tiny_model, tokenizer=smol_tokenizer, prompts=prompts, temperatures=[0.0, 1.0],
        baselines=["sft"], generation=GenerationConfig(max_new_tokens=6, batch_size=2), judge=judge,
        judged_text=lambda p, c: p + c, seed=0, compute_kl=True,
        kl_fn=lambda ps, cs: sequence_kl(other, tiny_model, smol_tokenizer, ps, cs),
    )  # fmt: skip
    assert [(r["temperature"], r["baseline"]) for r in tables.win_rates] == [(0.0, "sft"), (1.0, "sft")]
    assert all(r["n_valid"] == 3 and 0 <= r["win_rate"] <= 1 for r in tables.win_rates)
    kl = {(r["policy"], r["temperature"]): r["kl"] for r in tables.reward_kl}
    assert kl[("sft", 0.0)] == 0.0 and kl[("dpo", 1.0)] > 0
    assert len(tables.samples) == 6 and len(tables.verdicts) == 6
    m = tables.metrics()
    assert list(m)[0] == "win_rate/sft/t0" and "judge/cost_usd" in m and math.isfinite(m["kl/dpo/t1"])


def test_text_baseline_needs_references(tiny_model, smol_tokenizer, tmp_path):
    judge = make_judge(JudgeConfig(backend="reward", reward="vader"), tmp_path)
    with pytest.raises(ValueError, match="evaluate.baselines: 'reference_text' needs prompts with reference texts"):
        evaluate_policy(
            policy=tiny_model, sft=tiny_model, tokenizer=smol_tokenizer, prompts=[{"prompt": "x", "reference": None}],
            temperatures=[0.0], baselines=["reference_text"], generation=GenerationConfig(max_new_tokens=2),
            judge=judge, judged_text=lambda p, c: c, seed=0,
        )  # fmt: skip
