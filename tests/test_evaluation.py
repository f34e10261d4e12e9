"""Sequence KL on sampled ids, and the evaluation loop on the tiny model with the offline reward judge:
KL only at T=1, frontier points per policy, intervals over prompts, length-controlled win rates, best-of-N."""
import math

import pytest
import torch

from alignpipe.evaluation import REWARD_JUDGE_LC_NOTE, ExtraPolicy, evaluate_policy
from alignpipe.generate import generate
from alignpipe.judge import make_judge
from alignpipe.kl import sampled_sequence_kl
from alignpipe.models import load_causal_lm
from pipeline_config.schema import GenerationConfig, JudgeConfig

from tiny_pipeline import PROMPTS
from tiny_pipeline import perturbed_model as _perturbed


def _manual_kl(p_model, q_model, prompt_ids, token_ids):
    """sum over the sampled positions of KL(p(.|prefix) || q(.|prefix)), from full forwards."""
    ids = torch.tensor([prompt_ids + token_ids])
    with torch.no_grad():
        lp = p_model(ids).logits.float().log_softmax(-1)[0]
        lq = q_model(ids).logits.float().log_softmax(-1)[0]
    per_position = (lp.exp() * (lp - lq)).sum(-1)
    return per_position, float(per_position[len(prompt_ids) - 1 : len(prompt_ids) + len(token_ids) - 1].sum())


def test_kl_of_a_model_with_itself_is_zero(tiny_model, smol_tokenizer):
    g = generate(tiny_model, smol_tokenizer, PROMPTS, max_new_tokens=6, temperature=1.0, seed=0)
    kl = sampled_sequence_kl(tiny_model, tiny_model, g.prompt_ids, g.token_ids, pad_id=smol_tokenizer.pad_token_id, batch_size=2)
    assert kl == pytest.approx([0.0] * len(PROMPTS), abs=1e-5)


def test_kl_scores_exactly_the_sampled_ids_and_no_synthetic_eos(tiny_model, tiny_model_dir, smol_tokenizer):
    other = _perturbed(tiny_model_dir)
    g = generate(tiny_model, smol_tokenizer, PROMPTS, max_new_tokens=5, temperature=1.0, seed=3)
    assert not any(g.finished)  # a random tiny model never says EOS: every sample is cut at 5 tokens
    kl = sampled_sequence_kl(tiny_model, other, g.prompt_ids, g.token_ids, pad_id=smol_tokenizer.pad_token_id, batch_size=3)
    for i in range(len(PROMPTS)):
        per_position, expected = _manual_kl(tiny_model, other, g.prompt_ids[i], g.token_ids[i])
        assert kl[i] == pytest.approx(expected, rel=1e-4) and kl[i] > 0
        # Scoring an appended EOS (what re-tokenizing text + EOS did) adds one more position's KL.
        with_eos = expected + float(_manual_kl(tiny_model, other, g.prompt_ids[i], g.token_ids[i] + [smol_tokenizer.eos_token_id])[0][-2])
        assert abs(kl[i] - with_eos) > 1e-4
    # A sample that stopped at EOS is scored through its EOS step: pass one with an explicit EOS.
    stopped = [g.token_ids[0][:2] + [smol_tokenizer.eos_token_id]]
    assert sampled_sequence_kl(tiny_model, other, g.prompt_ids[:1], stopped, pad_id=smol_tokenizer.pad_token_id)[0] == pytest.approx(
        _manual_kl(tiny_model, other, g.prompt_ids[0], stopped[0])[1], rel=1e-4)
    with pytest.raises(ValueError, match="sample 0 has an empty completion"):
        sampled_sequence_kl(tiny_model, other, g.prompt_ids[:1], [[]], pad_id=smol_tokenizer.pad_token_id)


def test_kl_of_packed_samples_equals_unpacked(tiny_model, tiny_model_dir, smol_tokenizer):
    """Scoring packs the samples (the default, sdpa takes the layout mask): same KL as one row each,
    whatever the packing, and the packed batch really has less padding."""
    from alignpipe.kl import collate_sampled, scoring_packing

    other = _perturbed(tiny_model_dir)
    g = generate(tiny_model, smol_tokenizer, PROMPTS, max_new_tokens=7, temperature=1.0, seed=5)
    token_ids = [ids[:n] for ids, n in zip(g.token_ids, [7, 1, 2, 1, 6])]  # short ones share a row with room to spare
    pad = smol_tokenizer.pad_token_id
    assert scoring_packing(tiny_model, other) == "to_longest"
    unpacked = sampled_sequence_kl(tiny_model, other, g.prompt_ids, token_ids, pad_id=pad, batch_size=5, packing="off")
    for packing in (None, "to_longest", "one_row"):
        packed = sampled_sequence_kl(tiny_model, other, g.prompt_ids, token_ids, pad_id=pad, batch_size=5, packing=packing)
        assert packed == pytest.approx(unpacked, rel=1e-4, abs=1e-6), packing
    rows = collate_sampled(g.prompt_ids, token_ids, pad, "to_longest")
    assert rows.input_ids.shape[0] < len(PROMPTS) and rows.padding_fraction < collate_sampled(g.prompt_ids, token_ids, pad).padding_fraction


def _evaluate(policy, sft, tokenizer, tmp_path, **kwargs):
    judge = make_judge(JudgeConfig(backend="reward", reward="vader"), tmp_path)
    args = dict(
        policy=policy, sft=sft, tokenizer=tokenizer, prompts=[{"prompt": p, "reference": None} for p in PROMPTS],
        temperatures=[0.0, 1.0], headline_temperature=1.0, baselines=["sft"],
        generation=GenerationConfig(max_new_tokens=6, batch_size=2), judge=judge, judged_text=lambda p, c: p + c,
        seed=0, compute_kl=True,
    )
    return evaluate_policy(**{**args, **kwargs})


def test_kl_only_at_t1_and_the_frontier_is_one_point_per_policy(tiny_model, tiny_model_dir, smol_tokenizer, tmp_path):
    policy = _perturbed(tiny_model_dir, scale=0.2)
    checkpoint = ExtraPolicy("dpo@step5", 5, lambda: _perturbed(tiny_model_dir, scale=0.1, seed=2))
    tables = _evaluate(policy, tiny_model, smol_tokenizer, tmp_path, policy_step=10, extra_policies=[checkpoint])
    kl = {(r["policy"], r["temperature"]): r["kl"] for r in tables.reward_kl}
    assert kl[("dpo", 0.0)] is None and kl[("sft", 0.0)] is None  # no KL of greedy samples
    assert kl[("sft", 1.0)] == 0.0 and kl[("dpo", 1.0)] > 0
    frontier = {r["label"]: r for r in tables.frontier}
    assert [r["label"] for r in tables.frontier] == ["sft", "dpo@step5", "dpo"]  # SFT first, then by DPO step
    assert all(r["temperature"] == 1.0 and r["n"] == len(PROMPTS) for r in tables.frontier)
    assert frontier["dpo"]["kl"] == kl[("dpo", 1.0)] and frontier["dpo"]["dpo_step"] == 10
    assert 0 < frontier["dpo@step5"]["kl"] < frontier["dpo"]["kl"]  # a smaller perturbation spends less KL
    for r in tables.frontier[1:]:
        assert r["kl_ci_low"] <= r["kl"] <= r["kl_ci_high"] and r["reward_ci_low"] <= r["mean_reward"] <= r["reward_ci_high"]
    m = tables.metrics()
    assert "kl/dpo/t0" not in m and math.isfinite(m["kl/dpo/t1"]) and m["frontier/dpo@step5/kl"] == frontier["dpo@step5"]["kl"]
    assert list(m)[0] == "win_rate/sft/t1"  # the headline row leads


def test_without_a_t1_row_the_frontier_samples_at_t1_anyway(tiny_model, tiny_model_dir, smol_tokenizer, tmp_path):
    tables = _evaluate(_perturbed(tiny_model_dir, scale=0.2), tiny_model, smol_tokenizer, tmp_path, temperatures=[0.0], headline_temperature=0.0)
    assert all(r["kl"] is None for r in tables.reward_kl)
    assert [(r["label"], r["temperature"]) for r in tables.frontier] == [("sft", 1.0), ("dpo", 1.0)] and tables.frontier[1]["kl"] > 0


def test_win_rate_rows_carry_cis_length_control_and_lengths(tiny_model, tiny_model_dir, smol_tokenizer, tmp_path):
    tables = _evaluate(_perturbed(tiny_model_dir, scale=0.2), tiny_model, smol_tokenizer, tmp_path, compute_kl=False)
    assert [(r["temperature"], r["baseline"], r["headline"]) for r in tables.win_rates] == [(0.0, "sft", False), (1.0, "sft", True)]
    for r in tables.win_rates:
        assert r["n_valid"] == len(PROMPTS) and r["ci_low"] <= r["win_rate"] <= r["ci_high"]
        assert r["lc_win_rate"] is None and r["lc_note"] == REWARD_JUDGE_LC_NOTE  # length is part of a reward's effect
        assert r["reward_diff_ci_low"] <= r["reward_diff"] <= r["reward_diff_ci_high"]
        samples = [s for s in tables.samples if s["temperature"] == r["temperature"]]
        tokens = lambda text: len(smol_tokenizer(text, add_special_tokens=False).input_ids)  # noqa: E731
        assert r["mean_length_policy"] == pytest.approx(sum(tokens(s["policy"]) for s in samples) / len(samples))
        assert r["mean_length_baseline"] == pytest.approx(sum(tokens(s["sft"]) for s in samples) / len(samples))
        assert r["order_disagreement"] is None and r["first_wins_share"] is None  # a reward judge sees no order
    assert len(tables.samples) == 2 * len(PROMPTS) and len(tables.verdicts) == 2 * len(PROMPTS) and tables.frontier == []


def test_best_of_n_keeps_the_candidate_the_labeller_scores_best(tiny_model, tiny_model_dir, smol_tokenizer, tmp_path):
    seen: list[list[str]] = []

    def longest(prompts, groups):  # a labeller that prefers longer texts
        seen.extend(groups)
        return [[float(len(c)) for c in group] for group in groups]

    tables = _evaluate(_perturbed(tiny_model_dir, scale=0.2), tiny_model, smol_tokenizer, tmp_path, temperatures=[1.0],
                       baselines=["sft", "best_of_n"], best_of_n=3, labeller=longest, compute_kl=False)
    assert len(seen) == len(PROMPTS) and all(len(g) == 3 for g in seen)
    assert [s["best_of_n"] for s in tables.samples] == [max(g, key=len) for g in seen]
    assert [s["best_of_n_candidates"] for s in tables.samples] == seen
    assert [r["baseline"] for r in tables.win_rates] == ["sft", "best_of_n"]
    assert {r["policy"] for r in tables.reward_kl} == {"dpo", "sft", "best_of_n"}
    with pytest.raises(ValueError, match="best_of_n' needs N >= 2 and a labeller"):
        _evaluate(tiny_model, tiny_model, smol_tokenizer, tmp_path, baselines=["best_of_n"])


def test_text_baseline_needs_references(tiny_model, smol_tokenizer, tmp_path):
    judge = make_judge(JudgeConfig(backend="reward", reward="vader"), tmp_path)
    with pytest.raises(ValueError, match="evaluate.baselines: 'reference_text' needs prompts with reference texts"):
        evaluate_policy(
            policy=tiny_model, sft=tiny_model, tokenizer=smol_tokenizer, prompts=[{"prompt": "x", "reference": None}],
            temperatures=[0.0], baselines=["reference_text"], generation=GenerationConfig(max_new_tokens=2),
            judge=judge, judged_text=lambda p, c: c, seed=0,
        )  # fmt: skip


@pytest.mark.parametrize("lora", [False, True])
def test_a_dpo_snapshot_loads_back_into_the_policy_it_was_taken_from(lora, tiny_model_dir, smol_tokenizer, tmp_path):
    """evaluate.checkpoints: the trainable weights the training loop checkpoints (full model, or LoRA
    adapters) on the SFT model give the very policy of that step."""
    from safetensors.torch import save_file

    from alignpipe.stages.artifacts import read_snapshots, write_snapshots
    from alignpipe.stages.common import apply_lora
    from alignpipe.stages.evaluate_stage import checkpoint_policies
    from pipeline_config.schema import LoraConfig

    sft_dir = tmp_path / "sft"
    load_causal_lm(tiny_model_dir).save_pretrained(sft_dir / "model")
    smol_tokenizer.save_pretrained(sft_dir / "model")
    lora_cfg = LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"]) if lora else None
    torch.manual_seed(0)
    trained = apply_lora(load_causal_lm(tiny_model_dir), lora_cfg)
    with torch.no_grad():
        for p in trained.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    weights = {n: p.detach().clone().contiguous() for n, p in trained.named_parameters() if p.requires_grad}
    save_file(weights, str(tmp_path / "w.safetensors"))
    dpo_dir = tmp_path / "dpo"
    dpo_dir.mkdir()
    write_snapshots(dpo_dir, {6: tmp_path / "w.safetensors", 3: tmp_path / "w.safetensors"}, lora_cfg.model_dump() if lora else None)
    assert sorted(read_snapshots(dpo_dir)["steps"]) == [3, 6]
    [policy] = checkpoint_policies(dpo_dir, sft_dir, every=6, dtype="float32")
    assert (policy.label, policy.dpo_step) == ("dpo@step6", 6)
    ids = torch.tensor([smol_tokenizer("The film was good").input_ids])
    with torch.no_grad():
        assert torch.allclose(policy.load()(ids).logits, trained.eval()(ids).logits, atol=1e-5)
    with pytest.raises(ValueError, match="holds no DPO snapshots"):
        checkpoint_policies(sft_dir, sft_dir, every=6, dtype="float32")
