"""The judge's pure parts: prompts, verdict parsing, order coin, aggregation, retry waits, cache file."""
from __future__ import annotations

import json
import math
import random

import pytest

from alignpipe.judge.aggregate import summarize
from alignpipe.judge.cache import VerdictCache, cache_key
from alignpipe.judge.gate import ValidityGate, snippet
from alignpipe.judge.ordering import BASELINE_FIRST, POLICY_FIRST, item_order, policy_wins, shown_texts
from alignpipe.judge.parsing import parse_choice
from alignpipe.judge.records import Verdict
from alignpipe.judge.retry import backoff_delay, is_retryable_status, retry_after_seconds
from alignpipe.judge.templates import TEMPLATES, judge_query, render


def test_templates_match_judge_config_names():
    from pipeline_config.schema import JudgeConfig

    names = set(JudgeConfig.model_fields["template"].annotation.__args__)
    assert names == set(TEMPLATES)


def test_prompts_carry_the_papers_wording():
    s = render("summarization", "SUBREDDIT: r/x\n\nTITLE: t\n\nPOST: my post\n\nTL;DR:", " first ", "second")
    assert s.startswith(
        "Which of the following summaries does a better job of summarizing the most important points in the given forum post?\n"
    )
    assert "Post:\nmy post\n\nSummary A:\nfirst\n\nSummary B:\nsecond\n\n" in s
    assert s.endswith('Comparison: <one-sentence comparison and explanation>\nPreferred: <"A" or "B">')
    c = render("concise", "a post", "x", "y")
    assert "forum post, without including unimportant or irrelevant details? A good summary is both precise and concise." in c
    n = render("news", "an article", "x", "y")
    assert "given news article, without including unimportant" in n and "forum post" not in n
    d = render("dialogue", "\n\nHuman: how do I boil an egg?\n\nAssistant:", "x", "y")
    assert d.startswith("For the following query to a chatbot, which response is more helpful?")
    assert "Response A:\nx" in d and "explain which you feel is more helpful" in d
    assert d.endswith('More helpful: <"A" or "B">') and not d.count("Assistant:")


def test_judge_query_keeps_unmarked_prompts_whole():
    assert judge_query("summarization", "  just text  ") == "just text"
    assert judge_query("news", "Article body\nTL;DR:") == "Article body"


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("Comparison: A is tighter.\nPreferred: A", "A"),
        ('Comparison: x\n\n  Preferred: "B"  \n\n', "B"),
        ("Comparison: x\npreferred:b.", "B"),
        ("Comparison: x\n**Preferred:** A", "A"),
        ("Comparison: x\nPreferred: \u201cA\u201d", "A"),
        ("Preferred: A\nActually I am unsure.", None),  # only the last line counts
        ("Comparison: B is better", None),
        ("Comparison: x\nPreferred: A or B", None),
        ("Comparison: x\nMore helpful: A", None),  # the other template's key
        ("", None),
    ],
)
def test_parse_choice_reads_only_the_final_line(answer, expected):
    assert parse_choice(answer, "summarization") == expected


def test_parse_choice_uses_the_dialogue_key():
    assert parse_choice("Comparison: x\nMore helpful: 'B'", "dialogue") == "B"
    assert parse_choice("Comparison: x\nPreferred: B", "dialogue") is None


def test_order_is_seeded_per_item_and_balanced():
    orders = [item_order(0, i) for i in range(400)]
    assert orders == [item_order(0, i) for i in range(400)]
    assert 150 < orders.count(POLICY_FIRST) < 250
    assert orders != [item_order(1, i) for i in range(400)]
    assert shown_texts(BASELINE_FIRST, "p", "b") == ("b", "p")
    assert policy_wins(BASELINE_FIRST, 1.0) == 0.0 and policy_wins(POLICY_FIRST, 0.5) == 0.5
    assert policy_wins(BASELINE_FIRST, None) is None


def _v(win, cached=False, tokens=(10, 2), cost=0.1, order=POLICY_FIRST):
    return Verdict(win, "raw", order, cached, tokens[0], tokens[1], cost)


def test_summarize_excludes_invalid_and_counts_only_fresh_spend():
    r = summarize([_v(1.0), _v(0.0, cached=True), _v(None), _v(1.0)], 1)
    assert (r.n_valid, r.n_invalid, r.n_cached) == (3, 1, 1)
    assert r.win_rate == pytest.approx(2 / 3)
    assert r.stderr == pytest.approx(math.sqrt(1 / 3) / math.sqrt(3))  # sd of the item scores [1, 0, 1] over sqrt(3)
    assert (r.input_tokens, r.output_tokens, r.cost_usd) == (30, 6, pytest.approx(0.3))
    assert r.metrics("judge/")["judge/n_invalid"] == 1.0 and "judge/disagreement_rate" not in r.metrics("judge/")
    assert summarize([_v(None)], 1).win_rate is None


def test_one_unpriced_fresh_verdict_makes_the_cost_unknown_and_cached_ones_cost_nothing():
    unknown = summarize([_v(1.0), _v(0.0, cost=None)], 1)
    assert unknown.cost_usd is None and "cost_usd" not in unknown.metrics() and unknown.input_tokens == 20
    assert summarize([_v(1.0, cached=True, cost=0.0)], 1).cost_usd == 0.0
    assert summarize([], 1).cost_usd == 0.0


def test_summarize_both_orders_averages_and_measures_disagreement():
    pairs = [(1.0, 1.0), (1.0, 0.0), (0.0, 0.0), (None, 1.0), (None, None)]
    verdicts = [_v(x, order=POLICY_FIRST) if j == 0 else _v(x, order=BASELINE_FIRST) for p in pairs for j, x in enumerate(p)]
    r = summarize(verdicts, 2)
    assert r.item_wins == [1.0, 0.5, 0.0, None, None]  # one invalid order makes the item invalid
    assert r.win_rate == pytest.approx(1.5 / 3) and (r.n_valid, r.n_invalid) == (3, 2)
    assert r.disagreement_rate == pytest.approx(1 / 3)  # over the 3 items valid in both orders
    assert [len(v) for v in r.by_item()] == [2] * 5
    # position bias: the first shown text's result is policy_wins in policy-first order, 1 - policy_wins otherwise
    firsts = [x if j == 0 else 1.0 - x for p in pairs for j, x in enumerate(p) if x is not None]
    assert r.first_wins_share == pytest.approx(sum(firsts) / len(firsts)) and r.metrics()["first_wins_share"] == r.first_wins_share


def test_an_order_inconsistent_pair_is_a_tie_and_position_bias_shows():
    """A judge that always picks A: every pair judged both ways disagrees with itself, so every item
    is a tie (0.5, MT-Bench's rule), and the text shown first wins every time."""
    always_a = [_v(1.0, order=POLICY_FIRST), _v(0.0, order=BASELINE_FIRST)] * 3  # first_wins = 1 in both orders
    r = summarize(always_a, 2)
    assert r.item_wins == [0.5] * 3 and r.win_rate == 0.5
    assert r.disagreement_rate == 1.0 and r.first_wins_share == 1.0
    assert summarize(always_a, 2, order_sensitive=False).first_wins_share is None  # a reward judge sees no order


def test_llm_judges_ask_both_orders_by_default(tmp_path):
    """With the default config an order-sensitive judge sees every pair as A/B and as B/A."""
    from alignpipe.judge import Comparison, Judge
    from alignpipe.judge.backend import Answer
    from pipeline_config.schema import JudgeConfig

    class AlwaysFirst:
        name, model_id, order_sensitive = "fake", "always-a", True

        def answer(self, requests, on_answer):
            for r in requests:
                on_answer(r, Answer(1.0, "Preferred: A"))

    judge = Judge(AlwaysFirst(), tmp_path, template="summarization", both_orders=JudgeConfig().both_orders)
    result = judge.judge([Comparison("POST: p\n\nTL;DR:", "x", "y"), Comparison("POST: q\n\nTL;DR:", "u", "v")])
    assert [[v.order for v in item] for item in result.by_item()] == [[POLICY_FIRST, BASELINE_FIRST]] * 2
    assert result.item_wins == [0.5, 0.5] and result.first_wins_share == 1.0 and result.disagreement_rate == 1.0


def test_retry_policy():
    assert all(is_retryable_status(s) for s in (408, 409, 429, 500, 503))
    assert not any(is_retryable_status(s) for s in (400, 401, 403, 404, 422))
    assert retry_after_seconds({"retry-after": "3"}) == 3.0
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past
    assert retry_after_seconds({}) is None and retry_after_seconds({"retry-after": "soon"}) is None
    rng = random.Random(0)
    waits = [backoff_delay(a, 1.0, 10.0, rng) for a in range(6)]
    assert all(0.5 * min(10, 2**a) <= w <= min(10, 2**a) for a, w in enumerate(waits))
    assert backoff_delay(5, 1.0, 10.0, rng, retry_after=42.0) == 42.0
    assert backoff_delay(0, 1.0, 10.0, rng, retry_after=3600.0) == 120.0  # an hour's Retry-After: capped


def test_cache_key_covers_every_part():
    base = ("openai", "gpt-4o", "summarization", "p", "a", "b", POLICY_FIRST)
    keys = {cache_key(*base)}
    for i, changed in enumerate(["reward", "gpt-4", "concise", "q", "c", "d", BASELINE_FIRST]):
        keys.add(cache_key(*base[:i], changed, *base[i + 1 :]))
    assert len(keys) == 8


def test_cache_survives_a_torn_last_line(tmp_path):
    cache = VerdictCache(tmp_path)
    cache.put("k1", {"first_wins": 1.0, "raw": "Preferred: A"})
    cache.put("k2", {"first_wins": None, "raw": "?"})
    with open(cache.path, "ab") as f:
        f.write(b'{"key": "k3", "first_wi')  # a crash mid-write
    reopened = VerdictCache(tmp_path)
    assert reopened.n_torn == 1 and len(reopened) == 2 and "k3" not in reopened
    assert reopened.get("k2")["first_wins"] is None
    reopened.put("k3", {"first_wins": 0.0, "raw": "Preferred: B"})
    again = VerdictCache(tmp_path)
    assert len(again) == 3 and again.get("k3")["first_wins"] == 0.0
    lines = cache.path.read_text().splitlines()
    assert json.loads(lines[-1])["key"] == "k3"


def test_validity_gate_fails_only_once_the_share_of_all_verdicts_is_certain():
    gate = ValidityGate(0.2, 10)
    gate.add(False, "no verdict", count=2)  # an item asked twice in one call counts twice
    assert not gate.failed  # 2 of 10 is not more than 0.2
    for _ in range(5):
        gate.add(True, "Preferred: A")
    gate.add(False, "no verdict")
    assert gate.failed and (gate.n_seen, gate.n_invalid) == (8, 3)  # certain before the last two arrive
    assert gate.examples == ["no verdict"]
    message = str(gate.error("reward:vader"))
    assert "3 of the first 8 verdicts (38%)" in message and "of all 10, so judging stopped" in message
    assert not ValidityGate(0.2, 0).failed
    with pytest.raises(ValueError, match="judge.max_invalid_fraction"):
        ValidityGate(1.5, 10)


def test_snippet_is_one_quoted_line_cut_at_the_limit():
    assert snippet("Comparison: x\nPreferred: C") == '"Comparison: x\\nPreferred: C"'
    assert snippet("é" * 200, limit=5) == '"ééééé…"'
