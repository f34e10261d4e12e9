"""Pairwise LLM-judge win rates (the DPO paper's GPT-4 protocol) with cache, retries, cost and a validity gate.

Usage: `make_judge(cfg, cache_dir).judge([Comparison(prompt, policy, baseline), ...])`. It raises
JudgeUnavailableError when the endpoint gives up or refuses, and JudgeInvalidVerdictsError when
more than `judge.max_invalid_fraction` of the verdicts are invalid.
Backends: `openai` (any OpenAI-compatible endpoint), `reward` (a scalar scorer from
alignpipe.rewards), `local` (an HF causal LM's next-token odds for "A" vs "B").
"""
from alignpipe.judge.backend import JudgeUnavailableError
from alignpipe.judge.factory import make_judge
from alignpipe.judge.gate import JudgeInvalidVerdictsError
from alignpipe.judge.judge import Judge, describe
from alignpipe.judge.records import Comparison, JudgeResult, Verdict
from alignpipe.judge.templates import TEMPLATES, render

__all__ = [
    "Comparison",
    "Judge",
    "JudgeInvalidVerdictsError",
    "JudgeResult",
    "JudgeUnavailableError",
    "TEMPLATES",
    "Verdict",
    "describe",
    "make_judge",
    "render",
]
