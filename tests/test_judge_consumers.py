"""Where the judge's results are used: evaluation tables, judge-labelled pairs, presets and config.

An unknown cost must stay unknown all the way to the metrics, and the validity gate must stop
every stage that judges, against a real local server.
"""
from __future__ import annotations

import pytest

from alignpipe.evaluation import evaluate_policy
from alignpipe.judge import JudgeInvalidVerdictsError, make_judge
from alignpipe.judge.tournament import copeland_scores
from fake_openai_server import FakeOpenAIServer
from judge_items import PRICE_IN, PRICE_OUT, judge_for
from pipeline_config import ConfigError, load_config
from pipeline_config.schema import GenerationConfig, JudgeConfig


@pytest.fixture(autouse=True)
def api_env(openai_env):
    """Every test here talks to a local OpenAI-compatible server with the test key."""


@pytest.fixture
def server():
    with FakeOpenAIServer(weak_models=("weak-judge",)) as s:
        yield s


PROMPTS = [{"prompt": f"POST: post {i} about the weather\n\nTL;DR:", "reference": f"reference {i} GOOD"} for i in range(3)]


def _evaluate(judge, model, tokenizer):
    return evaluate_policy(
        policy=model, sft=None, tokenizer=tokenizer, prompts=PROMPTS, temperatures=[0.0, 1.0],
        baselines=["reference_text"], generation=GenerationConfig(max_new_tokens=4, batch_size=3), judge=judge,
        judged_text=lambda p, c: c, seed=0,
    )  # fmt: skip


def test_evaluation_leaves_an_unknown_cost_out_and_sums_a_known_one(server, tmp_path, tiny_model, smol_tokenizer):
    unpriced = _evaluate(judge_for(server.base_url, tmp_path / "a", price_per_1k_input=None, price_per_1k_output=None), tiny_model, smol_tokenizer)
    m = unpriced.metrics()
    assert unpriced.usage["cost_usd"] is None and "judge/cost_usd" not in m
    assert m["judge/input_tokens"] == server.prompt_tokens > 0 and m["win_rate/reference_text/t0"] == 0.0

    tokens_before = (server.prompt_tokens, server.completion_tokens)
    priced = _evaluate(judge_for(server.base_url, tmp_path / "b"), tiny_model, smol_tokenizer).metrics()
    spent_in, spent_out = server.prompt_tokens - tokens_before[0], server.completion_tokens - tokens_before[1]
    assert priced["judge/cost_usd"] == pytest.approx(spent_in / 1000 * PRICE_IN + spent_out / 1000 * PRICE_OUT)


def test_the_gate_stops_evaluation(server, tmp_path, tiny_model, smol_tokenizer):
    with pytest.raises(JudgeInvalidVerdictsError, match="judge openai:weak-judge"):
        _evaluate(judge_for(server.base_url, tmp_path, model="weak-judge"), tiny_model, smol_tokenizer)


def test_the_gate_stops_judge_labelled_pairs(server, tmp_path):
    prompts = ["POST: my cat\n\nTL;DR:", "POST: my dog\n\nTL;DR:"]
    completions = [["cat GOOD", "cat"], ["dog", "dog GOOD"]]
    assert copeland_scores(judge_for(server.base_url, tmp_path), prompts, completions) == [[1.0, 0.0], [0.0, 1.0]]
    with pytest.raises(JudgeInvalidVerdictsError, match="have no valid verdict"):
        copeland_scores(judge_for(server.base_url, tmp_path, model="weak-judge"), prompts, completions)


def test_paper_presets_price_their_openai_judge_and_the_others_cost_nothing():
    for preset in ("tldr", "hh"):
        cfg = load_config(preset)
        for judge in (cfg.evaluate.judge, cfg.ood.judge):
            assert (judge.backend, judge.model) == ("openai", "gpt-4o")
            assert (judge.price_per_1k_input, judge.price_per_1k_output) == (0.0025, 0.01)
    for preset in ("demo", "imdb"):
        assert load_config(preset).evaluate.judge.backend == "reward"


def test_judge_config_defaults_and_one_line_errors(tmp_path):
    cfg = JudgeConfig()
    assert (cfg.price_per_1k_input, cfg.price_per_1k_output, cfg.max_invalid_fraction) == (None, None, 0.2)
    assert make_judge(JudgeConfig(backend="reward", max_invalid_fraction=0.5), tmp_path).max_invalid_fraction == 0.5
    for bad in ("1.5", "-0.1"):
        with pytest.raises(ConfigError) as err:
            load_config("demo", overrides=[f"evaluate.judge.max_invalid_fraction={bad}"])
        assert "evaluate.judge.max_invalid_fraction" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="evaluate.judge.price_per_1k_input"):
        load_config("demo", overrides=["evaluate.judge.price_per_1k_input=-1"])
