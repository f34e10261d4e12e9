"""Judge inputs shared by the openai-backend tests and the judging subprocess they kill.

The fake servers prefer the text containing GOOD, so every item's correct verdict is known.
"""
from __future__ import annotations

from alignpipe.judge import Comparison, Judge, make_judge
from alignpipe.judge.templates import render
from fake_openai_server import request_key
from pipeline_config.schema import JudgeConfig

PRICE_IN, PRICE_OUT = 0.5, 2.0  # $ per 1k tokens: large, so cost errors show


def judge_for(base_url, cache_dir, *, backoff_base_s=0.001, backoff_max_s=0.01, **overrides) -> Judge:
    settings = dict(
        backend="openai",
        model="judge-model",
        base_url=base_url,
        template="summarization",
        concurrency=4,
        max_retries=3,
        timeout_s=5.0,
        price_per_1k_input=PRICE_IN,
        price_per_1k_output=PRICE_OUT,
        both_orders=False,  # these tests count requests per item; both orders is tested where asked for
    )
    cfg = JudgeConfig(**{**settings, **overrides})
    return make_judge(cfg, cache_dir, backoff_base_s=backoff_base_s, backoff_max_s=backoff_max_s)


def items(n, marker="", start=0, good_policy=lambda i: i % 2 == 0):
    """By default even items: the policy's summary is the GOOD one; odd items: the baseline's."""
    out = []
    for i in range(start, start + n):
        good = good_policy(i)
        out.append(
            Comparison(
                prompt=f"SUBREDDIT: r/test\n\nTITLE: t{i}\n\nPOST: post number {i} {marker}\n\nTL;DR:",
                policy=f"policy summary {i}" + (" GOOD" if good else ""),
                baseline=f"baseline summary {i}" + ("" if good else " GOOD"),
            )
        )
    return out


def expected_wins(batch):
    return [1.0 if "GOOD" in c.policy else 0.0 for c in batch]


def server_keys(judge: Judge, batch) -> dict[str, str]:
    """Cache key -> the fake server's request key, for every judgment the judge would ask."""
    return {
        slot.request.key: request_key(render(judge.template, slot.request.prompt, slot.request.first, slot.request.second))
        for slot in judge._plan(batch)
    }
