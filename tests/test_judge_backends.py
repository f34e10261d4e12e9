"""The reward and local judge backends, through make_judge and the shared cache."""
from __future__ import annotations

import pytest

from alignpipe.judge import Comparison, make_judge
from alignpipe.judge.backend import Request
from alignpipe.judge.local_backend import LocalLMBackend
from alignpipe.rewards import VaderScorer
from pipeline_config.schema import JudgeConfig

HAPPY = "What a wonderful, delightful and moving film. I loved every minute."
GLUM = "A terrible, dull and painful film. I hated every minute."
FLAT_1 = "The film is ninety minutes long."
FLAT_2 = "It was released in the spring."


def test_reward_judge_compares_scores_ties_and_ignores_order(tmp_path):
    cfg = JudgeConfig(backend="reward", reward="vader", both_orders=True)
    batch = [
        Comparison("p0", HAPPY, GLUM),
        Comparison("p1", GLUM, HAPPY),
        Comparison("p2", FLAT_1, FLAT_2),  # both score 0.0: a tie
        Comparison("p3", HAPPY, FLAT_1),
    ]
    judge = make_judge(cfg, tmp_path)
    result = judge.judge(batch)
    assert result.item_wins == [1.0, 0.0, 0.5, 1.0]
    assert len(result.verdicts) == 4 and result.disagreement_rate is None  # one verdict per item
    assert result.win_rate == pytest.approx(2.5 / 4) and result.cost_usd == 0.0
    assert judge.scores([HAPPY, GLUM]) == VaderScorer().score([HAPPY, GLUM])
    again = make_judge(cfg, tmp_path).judge(batch)
    assert again.n_cached == 4 and again.item_wins == result.item_wins


def test_hf_reward_needs_a_model(tmp_path):
    with pytest.raises(ValueError, match="needs a model"):
        make_judge(JudgeConfig(backend="reward", reward="hf_classifier"), tmp_path)


def test_local_backend_needs_an_existing_model(tmp_path):
    with pytest.raises(ValueError, match="judge.local_model"):
        make_judge(JudgeConfig(backend="local"), tmp_path)
    with pytest.raises(FileNotFoundError, match="judge.local_model"):
        make_judge(JudgeConfig(backend="local", local_model=str(tmp_path / "nope")), tmp_path)


def _local_items():
    """Prompts of very different lengths, so batching pads some rows heavily."""
    topics = ["cats", "a long trip across the country by train, then by bus, " * 12, "money", "a broken phone screen"]
    return [
        Comparison(f"POST: post {i} about {topic}\n\nTL;DR:", f"policy summary {i} of {topic[:40]}", f"baseline {i}")
        for i, topic in enumerate(topics)
    ]


def test_local_judge_gives_valid_deterministic_verdicts(tmp_path, tiny_model_dir):
    cfg = JudgeConfig(backend="local", local_model=str(tiny_model_dir), template="concise", both_orders=True)
    judge = make_judge(cfg, tmp_path / "a")
    with pytest.raises(TypeError, match="needs judge.backend 'reward'"):
        judge.scores(["x"])
    first = judge.judge(_local_items())
    second = make_judge(cfg, tmp_path / "b").judge(_local_items())
    assert all(v.policy_wins in (0.0, 1.0) for v in first.verdicts)
    assert first.n_invalid == 0 and first.disagreement_rate is not None
    assert [v.raw for v in first.verdicts] == [v.raw for v in second.verdicts]
    assert first.input_tokens > 0 and first.cost_usd == 0.0
    again = make_judge(cfg, tmp_path / "a").judge(_local_items())
    assert again.n_cached == 8 and again.item_wins == first.item_wins


@pytest.fixture(scope="module")
def pad_sensitive_model_dir(tmp_path_factory, smol_tokenizer):
    """A tiny random Llama whose pad embedding is huge: attending to padding would swamp its logits."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(smol_tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.model.embed_tokens.weight[smol_tokenizer.pad_token_id] *= 1000.0
    out = tmp_path_factory.mktemp("pad_sensitive_llama")
    model.save_pretrained(out)
    smol_tokenizer.save_pretrained(out)
    return out


def test_local_judge_scores_do_not_depend_on_batching(pad_sensitive_model_dir):
    requests = [Request(f"k{i}", c.prompt, c.policy, c.baseline) for i, c in enumerate(_local_items())]

    def log_probs(batch_size):
        backend = LocalLMBackend(pad_sensitive_model_dir, "summarization", batch_size=batch_size, device="cpu")
        got = {}
        backend.answer(requests, lambda r, a: got.__setitem__(r.key, a.raw))
        return [tuple(float(x.split("=")[1]) for x in got[r.key].split()) for r in requests]

    single, batched = log_probs(1), log_probs(4)
    for one, many in zip(single, batched):
        assert one == pytest.approx(many, abs=1e-3)
    assert len(set(single)) == len(single)  # different prompts, different odds


def test_local_judge_against_human_labels_on_the_shared_comparisons(tmp_path, tiny_model_dir, shared_data):
    """The judge-vs-human step on real TL;DR comparisons: agreement with its Wilson CI (the win rates' interval) and both-order
    statistics; swapping every human label turns agreement a into 1 - a exactly (same verdicts, both orders)."""
    from alignpipe.data import human_label_pairs
    from alignpipe.judge.agreement import human_agreement
    from pipeline_config.schema import DataConfig

    judge = make_judge(JudgeConfig(backend="local", local_model=str(tiny_model_dir), template="concise"), tmp_path)
    pairs, where = human_label_pairs(DataConfig(task="tldr", dir=str(shared_data)), 12)
    row = human_agreement(judge, pairs, source=where)
    assert row["n"] + row["n_invalid"] == 12 and row["source"] == where and row["judge"].startswith("local:")
    assert row["ci_low"] <= row["agreement"] <= row["ci_high"]
    assert row["order_disagreement"] is not None and 0 <= row["first_wins_share"] <= 1
    swapped = [{**p, "chosen": p["rejected"], "rejected": p["chosen"]} for p in pairs]
    flipped = human_agreement(judge, swapped, source=where)
    assert flipped["agreement"] == pytest.approx(1 - row["agreement"])
