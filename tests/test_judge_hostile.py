"""The openai judge against hostile endpoints: real HTTP servers on 127.0.0.1 that fail on purpose.

A 30% fault rate of every transient kind must still give every item its correct verdict with
each judgment received once; a refused key must stop everything at once; a SIGKILLed run must
never pay again, on rerun, for a verdict it had stored.
"""
from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from alignpipe.judge import JudgeUnavailableError
from alignpipe.judge.cache import VerdictCache
from fake_openai_server import FakeOpenAIServer
from hostile_openai_server import RETRYABLE_FAULTS, HostileOpenAIServer
from judge_items import expected_wins, items, judge_for, server_keys

WORKER = Path(__file__).parent / "scripts" / "judge_items.py"
HOSTILE_SEED = 4  # with 100 items: every fault kind is drawn, the worst judgment needs 4 attempts


@pytest.fixture(autouse=True)
def api_env(openai_env):
    """Every test here talks to a local OpenAI-compatible server with the test key."""


def test_a_30_percent_hostile_endpoint_still_gives_every_item_its_verdict_once(tmp_path):
    batch = items(100, good_policy=lambda i: i % 3 == 0)  # 34 policy wins: an exact win rate of 0.34
    with HostileOpenAIServer(seed=HOSTILE_SEED, fault_rate=0.3, slow_s=5.0, retry_after="1") as server:
        # timeout_s: long enough that a loaded CI machine's real answers never miss it
        judge = judge_for(server.base_url, tmp_path, concurrency=8, max_retries=6, timeout_s=3.0)
        keys = list(server_keys(judge, batch).values())
        planned = {k: server.attempts_needed(k) for k in keys}
        # The draw really is hostile: every fault kind occurs, some judgments fail several times in a row.
        assert {f for k in keys for f in server.planned_faults(k)} == set(RETRYABLE_FAULTS)
        assert max(planned.values()) == 4 and sum(planned.values()) > 1.3 * len(keys)
        started = time.monotonic()
        result = judge.judge(batch)
        elapsed = time.monotonic() - started
        print(f"hostile: {server.n_requests} requests for {len(keys)} judgments, faults {dict(server.faults)}, {elapsed:.1f}s")

        assert result.item_wins == expected_wins(batch) and result.n_invalid == 0
        assert result.win_rate == 34 / 100
        assert dict(server.requests_by_key) == planned  # every fault retried, nothing else asked twice
        assert set(server.answers_by_key.values()) == {1}
        assert set(server.faults) == set(RETRYABLE_FAULTS)
        for key, faults in server.fault_log.items():  # Retry-After: 1 honoured (own backoff is ~1 ms)
            times = server.request_times[key]
            assert all(times[i + 1] - times[i] >= 1.0 for i, f in enumerate(faults) if f == "429")
        assert (result.input_tokens, result.output_tokens) == (server.prompt_tokens, server.completion_tokens)

        again = judge_for(server.base_url, tmp_path).judge(batch)
        assert again.n_cached == 100 and again.item_wins == result.item_wins
        assert dict(server.requests_by_key) == planned  # the rerun asked nothing


@pytest.mark.parametrize("status", ["401", "403"])
def test_a_refused_key_is_one_line_naming_the_endpoint_and_no_storm(tmp_path, status):
    batch = items(60, f"[[once:{status}]]")  # every judgment is refused
    with FakeOpenAIServer() as server:
        with pytest.raises(JudgeUnavailableError) as err:
            judge_for(server.base_url, tmp_path, concurrency=4, max_retries=6).judge(batch)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"judge endpoint {server.base_url} rejected OPENAI_API_KEY (HTTP {status})")
    assert "0 of 60 new verdicts were saved" in message and message.endswith("fix the key and rerun")
    assert err.value.refused and pickle.loads(pickle.dumps(err.value)).refused
    assert server.n_requests <= 4  # those already in flight; none of the other 56 was sent
    assert set(server.requests_by_key.values()) == {1}  # and none retried


def test_a_wrong_key_sends_at_most_one_round_of_requests(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")
    with FakeOpenAIServer() as server:
        with pytest.raises(JudgeUnavailableError, match=f"judge endpoint {server.base_url} rejected OPENAI_API_KEY"):
            judge_for(server.base_url, tmp_path, concurrency=4).judge(items(60))
    assert 1 <= server.n_unauthorized <= 4


def test_after_a_refusal_a_request_waiting_to_retry_is_not_retried(tmp_path):
    batch = items(1, "[[once:500]]") + items(1, "[[once:401]]", start=1) + items(10, start=2)
    with FakeOpenAIServer() as server:
        judge = judge_for(server.base_url, tmp_path, concurrency=2, backoff_base_s=2.0, backoff_max_s=2.0)
        failing_500 = server_keys(judge, batch[:1]).popitem()[1]
        started = time.monotonic()
        with pytest.raises(JudgeUnavailableError, match="HTTP 401"):
            judge.judge(batch)
        elapsed = time.monotonic() - started
    assert server.requests_by_key[failing_500] == 1  # its retry (due after 1-2 s) was called off
    assert server.n_requests == 2 and elapsed < 1.0  # nothing else was sent, and no one waited it out


def test_sigkill_mid_judging_then_rerun_pays_for_no_stored_verdict(tmp_path):
    n = 120
    batch = items(n)
    cache_dir = tmp_path / "cache"
    no_hangs = tuple(k for k in RETRYABLE_FAULTS if k != "timeout")  # timeouts are tested above; here they only slow
    with HostileOpenAIServer(seed=1, fault_rate=0.3, kinds=no_hangs, delay_s=0.05, retry_after="0") as server:
        env = {**os.environ, "OPENAI_API_KEY": "test-key"}
        worker = subprocess.Popen(
            [sys.executable, str(WORKER), server.base_url, str(cache_dir), str(n)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        cache_file = cache_dir / "verdicts.jsonl"
        deadline = time.monotonic() + 120
        while not (cache_file.exists() and cache_file.read_bytes().count(b"\n") >= 20):
            assert worker.poll() is None, "the worker ended before it could be killed"
            assert time.monotonic() < deadline, "the worker stored nothing"
            time.sleep(0.01)
        worker.send_signal(signal.SIGKILL)
        out, _ = worker.communicate(timeout=30)
        assert worker.returncode == -signal.SIGKILL and "finished" not in out
        before = Counter(server.requests_by_key)
        answered_before = Counter(server.answers_by_key)

        judge = judge_for(server.base_url, cache_dir, max_retries=6)
        to_server = server_keys(judge, batch)
        stored = {to_server[k] for k in to_server if k in VerdictCache(cache_dir)}
        assert 20 <= len(stored) < n  # killed mid-judging
        result = judge.judge(batch)
        asked_again = {k for k in to_server.values() if server.requests_by_key[k] > before[k]}

    print(f"sigkill: {len(stored)} of {n} stored at the kill, {len(asked_again)} asked on the rerun")
    assert result.item_wins == expected_wins(batch) and result.n_cached == len(stored)
    assert asked_again == set(to_server.values()) - stored  # no stored verdict was asked again
    paid_twice = {k for k, c in server.answers_by_key.items() if c > 1}
    assert paid_twice == {k for k in answered_before if k not in stored}  # only those lost in flight
    assert len(paid_twice) <= 4  # at most the worker's concurrency
