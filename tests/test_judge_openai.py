"""The openai backend end to end, against a real local HTTP server with scripted faults."""
from __future__ import annotations

import asyncio
import json

import pytest

from alignpipe.judge import Comparison, JudgeUnavailableError, describe
from alignpipe.judge.ordering import BASELINE_FIRST, POLICY_FIRST
from fake_openai_server import BODY_FAULTS, FakeOpenAIServer
from judge_items import PRICE_IN, PRICE_OUT, expected_wins, items, judge_for, server_keys


@pytest.fixture(autouse=True)
def api_env(openai_env):
    """Every test here talks to a local OpenAI-compatible server with the test key."""


@pytest.fixture
def server():
    with FakeOpenAIServer() as s:
        yield s


def test_every_item_judged_once_and_a_rerun_is_free(server, tmp_path):
    batch = items(12)
    result = judge_for(server.base_url, tmp_path).judge(batch)
    assert result.item_wins == expected_wins(batch)  # the A/B order is mapped back correctly
    assert {v.order for v in result.verdicts} == {POLICY_FIRST, BASELINE_FIRST}
    assert (result.n_valid, result.n_invalid, result.n_cached) == (12, 0, 0)
    assert result.win_rate == 0.5 and result.stderr == pytest.approx((0.25 * 12 / 11 / 12) ** 0.5)  # sd of 6 wins, 6 losses over sqrt(12)
    assert server.n_requests == 12 and set(server.requests_by_key.values()) == {1}
    assert all(b["model"] == "judge-model" and b["temperature"] == 0 for b in server.seen)
    assert (result.input_tokens, result.output_tokens) == (server.prompt_tokens, server.completion_tokens)
    assert result.cost_usd == pytest.approx(server.prompt_tokens / 1000 * PRICE_IN + server.completion_tokens / 1000 * PRICE_OUT)
    assert result.cost_usd > 0

    again = judge_for(server.base_url, tmp_path).judge(batch)
    assert server.n_requests == 12  # nothing asked twice
    assert again.item_wins == result.item_wins and again.n_cached == 12 and all(v.cached for v in again.verdicts)
    assert (again.cost_usd, again.input_tokens, again.output_tokens) == (0.0, 0, 0)


def test_without_prices_the_cost_is_unknown_not_zero(server, tmp_path, capsys):
    result = judge_for(server.base_url, tmp_path, price_per_1k_input=None, price_per_1k_output=None).judge(items(4))
    assert result.cost_usd is None and all(v.cost_usd is None for v in result.verdicts)
    assert result.input_tokens == server.prompt_tokens > 0  # tokens are still counted
    assert "judge/cost_usd" not in result.metrics("judge/") and result.metrics("judge/")["judge/input_tokens"] > 0
    assert "cost unknown" in describe(result)
    assert "cost" not in capsys.readouterr().err  # the progress bar shows no price it does not know
    records = [json.loads(line) for line in (tmp_path / "verdicts.jsonl").read_text().splitlines()]
    assert [r["cost_usd"] for r in records] == [None] * 4
    one_price = judge_for(server.base_url, tmp_path / "b", price_per_1k_output=None).judge(items(1))
    assert one_price.cost_usd is None


def test_with_prices_the_progress_bar_shows_the_spend(server, tmp_path, capsys):
    result = judge_for(server.base_url, tmp_path).judge(items(4))
    assert f"cost=${result.cost_usd:.4f}" in capsys.readouterr().err and f"cost ${result.cost_usd:.4f}" in describe(result)


def test_a_new_seed_reorders_and_is_asked_afresh(server, tmp_path):
    batch = items(8)
    first = judge_for(server.base_url, tmp_path, seed=0).judge(batch)
    second = judge_for(server.base_url, tmp_path, seed=1).judge(batch)
    flipped = sum(a.order != b.order for a, b in zip(first.verdicts, second.verdicts))
    assert flipped > 0 and second.n_cached == 8 - flipped
    assert server.n_requests == 8 + flipped
    assert second.item_wins == first.item_wins == expected_wins(batch)


@pytest.mark.parametrize("fault", ["429", "500", "502", "503", *BODY_FAULTS])
def test_each_transient_fault_is_retried_once_and_nothing_else_is_asked_again(tmp_path, fault):
    batch = items(1, f"[[once:{fault}]]") + items(3, start=1)
    with FakeOpenAIServer(slow_s=4.0) as server:
        # A timeout long enough that no answer of a loaded machine misses it, but the fault's does.
        judge = judge_for(server.base_url, tmp_path, timeout_s=2.0 if fault == "timeout" else 10.0)
        faulty = server_keys(judge, batch[:1]).popitem()[1]
        result = judge.judge(batch)
    assert result.item_wins == expected_wins(batch) and result.n_invalid == 0
    assert server.faults == {fault: 1}
    assert server.requests_by_key[faulty] == 2 and sorted(server.requests_by_key.values()) == [1, 1, 1, 2]
    assert set(server.answers_by_key.values()) == {1}  # each judgment received (and paid) once
    assert (result.input_tokens, result.output_tokens) == (server.prompt_tokens, server.completion_tokens)


def test_a_429_waits_as_long_as_retry_after_says(tmp_path):
    with FakeOpenAIServer(retry_after="1") as server:
        result = judge_for(server.base_url, tmp_path).judge(items(1, "[[once:429]]"))  # own backoff: ~1 ms
        (times,) = server.request_times.values()
    assert result.item_wins == [1.0] and len(times) == 2
    assert times[1] - times[0] >= 1.0


def test_a_judgment_that_keeps_failing_gives_up_naming_the_last_fault(tmp_path):
    batch = items(2)
    with FakeOpenAIServer() as server:
        server.fault_for = lambda content, key, nth: "truncated_json"  # every request, forever
        with pytest.raises(JudgeUnavailableError) as err:
            judge_for(server.base_url, tmp_path, max_retries=2, concurrency=1).judge(batch)
    message = str(err.value)
    assert f"judge endpoint {server.base_url}: gave up after 3 attempts" in message
    assert "(last: a 200 whose body is not JSON (JSONDecodeError))" in message and "\n" not in message
    assert server.n_requests == 3  # the second item was never sent


def test_malformed_answers_get_one_retry_then_count_invalid(server, tmp_path):
    once, always = items(1, "[[malformed-once]]"), items(1, "[[malformed-always]]", start=1)
    batch = once + always + items(4, start=2)
    result = judge_for(server.base_url, tmp_path).judge(batch)
    assert result.item_wins == [1.0, None, 1.0, 0.0, 1.0, 0.0]
    assert (result.n_valid, result.n_invalid) == (5, 1)
    assert result.win_rate == pytest.approx(3 / 5)  # the invalid item is not in the denominator
    assert sorted(server.requests_by_key.values()) == [1, 1, 1, 1, 2, 2]
    retried = [b for b in server.seen if len(b["messages"]) == 3]
    assert len(retried) == 2 and all("Preferred: A" in b["messages"][2]["content"] for b in retried)
    # The retry's tokens are billed too.
    assert result.input_tokens == server.prompt_tokens
    # A settled invalid verdict is not paid for again.
    again = judge_for(server.base_url, tmp_path).judge(batch)
    assert again.n_invalid == 1 and server.n_requests == 8


@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_dead_server_loses_nothing_and_the_rerun_asks_only_the_rest(tmp_path, concurrency):
    batch = items(12)
    with FakeOpenAIServer(answer_limit=5) as dying:
        with pytest.raises(JudgeUnavailableError, match=r"gave up after 4 attempts.*5 of 12 new verdicts were saved.*rerun to resume"):
            judge_for(dying.base_url, tmp_path, concurrency=concurrency).judge(batch)
    cache_lines = (tmp_path / "verdicts.jsonl").read_text().splitlines()
    assert len(cache_lines) == 5 and all(json.loads(line)["first_wins"] is not None for line in cache_lines)

    with FakeOpenAIServer() as fresh:
        result = judge_for(fresh.base_url, tmp_path, concurrency=concurrency).judge(batch)
    assert fresh.n_requests == 7 and result.n_cached == 5
    assert result.item_wins == expected_wins(batch)
    answered = dying.answers_by_key + fresh.answers_by_key
    assert len(answered) == 12 and set(answered.values()) == {1}  # each judgment paid exactly once


def test_both_orders_reports_position_bias(server, tmp_path):
    fair = [Comparison(f"POST: fair {i}\n\nTL;DR:", f"policy {i} GOOD", f"baseline {i}") for i in range(4)]
    biased = [Comparison(f"POST: biased {i} [[always-A]]\n\nTL;DR:", f"policy {i} GOOD", f"baseline {i}") for i in range(2)]
    result = judge_for(server.base_url, tmp_path, both_orders=True).judge(fair + biased)
    assert server.n_requests == 12 and len(result.verdicts) == 12
    assert [[v.order for v in pair] for pair in result.by_item()] == [[POLICY_FIRST, BASELINE_FIRST]] * 6
    assert result.item_wins == [1.0] * 4 + [0.5] * 2
    assert result.disagreement_rate == pytest.approx(2 / 6)
    assert result.win_rate == pytest.approx(5 / 6)


def test_concurrency_is_bounded(tmp_path):
    with FakeOpenAIServer(delay_s=0.1) as server:
        judge_for(server.base_url, tmp_path, concurrency=3).judge(items(9))
    assert server.max_in_flight == 3


def test_dialogue_template_env_base_url_and_a_running_event_loop(server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    judge = judge_for(None, tmp_path, template="dialogue")
    batch = [
        Comparison("\n\nHuman: how do I boil an egg?\n\nAssistant:", "Boil it 8 minutes. GOOD", "No idea."),
        Comparison("\n\nHuman: and a potato?\n\nAssistant:", "Hmm.", "About 20 minutes. GOOD"),
    ]

    async def inside_a_loop():
        return judge.judge(batch)

    result = asyncio.run(inside_a_loop())
    assert result.item_wins == [1.0, 0.0]
    assert all("More helpful: <" in b["messages"][0]["content"] for b in server.seen)


def test_missing_api_key_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(RuntimeError, match="OPENAI_API_KEY"):
        judge_for("http://127.0.0.1:9/v1", tmp_path)


def test_a_rejected_key_fails_fast_without_echoing_it(server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-value")
    judge = judge_for(server.base_url, tmp_path)
    assert "sk-secret-value" not in repr(judge.backend)
    with pytest.raises(JudgeUnavailableError) as err:
        judge.judge(items(6))
    assert "rejected OPENAI_API_KEY (HTTP 401)" in str(err.value) and "secret" not in str(err.value)
    assert not (tmp_path / "verdicts.jsonl").exists() or not (tmp_path / "verdicts.jsonl").read_text()
