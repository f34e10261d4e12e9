"""The validity gate, against a real local server whose judge model cannot follow the format."""
from __future__ import annotations

import json
import pickle

import pytest

from alignpipe.judge import JudgeInvalidVerdictsError
from fake_openai_server import FakeOpenAIServer
from judge_items import expected_wins, items, judge_for


@pytest.fixture(autouse=True)
def api_env(openai_env):
    """Every test here talks to a local OpenAI-compatible server with the test key."""


@pytest.fixture
def server():
    with FakeOpenAIServer(weak_models=("weak-judge",)) as s:
        yield s


def cache_lines(cache_dir):
    path = cache_dir / "verdicts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_judge_that_never_follows_the_format_fails_with_the_share_and_two_raw_answers(server, tmp_path):
    batch = items(40)
    with pytest.raises(JudgeInvalidVerdictsError) as err:
        judge_for(server.base_url, tmp_path, model="weak-judge", concurrency=1).judge(batch)
    message = str(err.value)
    # 9 invalid of 40 is already more than 0.2: judging stops there instead of paying for 31 more.
    assert message.startswith(f"judge openai:weak-judge at {server.base_url}: 9 of the first 9 verdicts (100%) have no valid verdict")
    assert "already more than judge.max_invalid_fraction=0.2 of all 40, so judging stopped" in message
    assert "\n" not in message and message.count('"Both summaries capture the main idea') == 2
    assert message.count("…") == 2  # each raw answer (about 300 characters) is cut at 160
    assert server.n_requests == 18  # 9 judgments, each asked once and reminded of the format once
    assert len(cache_lines(tmp_path)) == 9 and all(r["first_wins"] is None for r in cache_lines(tmp_path))

    # The exception crosses process boundaries intact (Prefect may pickle it) and is a RuntimeError.
    copy = pickle.loads(pickle.dumps(err.value))
    assert type(copy) is JudgeInvalidVerdictsError and str(copy) == message and isinstance(copy, RuntimeError)

    # Rerunning the same judge fails again from the cache alone: nothing is paid for twice.
    with pytest.raises(JudgeInvalidVerdictsError, match="9 of the first 9 verdicts"):
        judge_for(server.base_url, tmp_path, model="weak-judge").judge(batch)
    assert server.n_requests == 18

    # A capable judge model is asked afresh (the model is part of every key) and passes.
    fixed = judge_for(server.base_url, tmp_path, model="judge-model").judge(batch)
    assert fixed.item_wins == expected_wins(batch) and fixed.n_invalid == 0 and server.n_requests == 18 + 40
    assert judge_for(server.base_url, tmp_path, model="judge-model").judge(batch).n_cached == 40
    assert server.n_requests == 58


def test_a_mostly_valid_run_passes_and_reports_n_invalid(server, tmp_path):
    batch = items(8) + items(2, "[[malformed-always]]", start=8)  # 2 of 10 invalid: exactly 0.2
    result = judge_for(server.base_url, tmp_path).judge(batch)
    assert (result.n_valid, result.n_invalid) == (8, 2)
    assert result.item_wins == expected_wins(batch[:8]) + [None, None] and result.win_rate == 0.5
    assert result.metrics("judge/")["judge/n_invalid"] == 2.0


def test_one_more_invalid_verdict_than_allowed_fails_after_all_arrived(server, tmp_path):
    batch = items(7) + items(3, "[[malformed-always]]", start=7)  # 3 of 10 invalid, the last three asked
    with pytest.raises(JudgeInvalidVerdictsError) as err:
        judge_for(server.base_url, tmp_path, concurrency=1).judge(batch)
    assert ": 3 of 10 verdicts (30%) have no valid verdict, more than judge.max_invalid_fraction=0.2;" in str(err.value)
    assert 'raw answers: "Comparison: Preferred: A is tempting, but both summaries are fine.\\nI cannot decide." (every one the same); ' in str(err.value)
    assert len(cache_lines(tmp_path)) == 10  # every verdict received is kept

    # A looser limit accepts the cached verdicts without asking anything again.
    asked = server.n_requests
    result = judge_for(server.base_url, tmp_path, max_invalid_fraction=0.3).judge(batch)
    assert result.n_invalid == 3 and result.n_cached == 10 and server.n_requests == asked


def test_the_limit_counts_verdicts_in_both_orders(server, tmp_path):
    batch = items(4) + items(1, "[[always-A]]", start=4) + items(1, "[[malformed-always]]", start=5)
    # 12 verdicts, 2 invalid (one item, both orders): 17% passes 0.2, fails 0.1.
    assert judge_for(server.base_url, tmp_path, both_orders=True).judge(batch).n_invalid == 1
    with pytest.raises(JudgeInvalidVerdictsError, match=r"2 of 12 verdicts \(17%\)"):
        judge_for(server.base_url, tmp_path, both_orders=True, max_invalid_fraction=0.1).judge(batch)


def test_a_zero_limit_fails_on_the_first_invalid_verdict_and_one_never_fails(server, tmp_path):
    batch = items(1, "[[malformed-always]]") + items(5, start=1)
    with pytest.raises(JudgeInvalidVerdictsError, match="1 of the first 1 verdicts"):
        judge_for(server.base_url, tmp_path, concurrency=1, max_invalid_fraction=0.0).judge(batch)
    assert server.n_requests == 2  # the other five were never sent
    weak = judge_for(server.base_url, tmp_path, model="weak-judge", max_invalid_fraction=1.0).judge(items(3))
    assert weak.n_invalid == 3 and weak.win_rate is None
