"""Win rates of the DPO policy against baselines, per sampling temperature, measured the paper's way.

For each temperature the policy (and the SFT model, when it is a baseline or needed for reward/KL)
samples one completion per prompt; the judge compares policy vs each baseline. With a scalar reward
judge the mean reward of each policy is reported too, and with `compute_kl` the sequence-level
KL(policy || SFT reference) of the policy's samples: the two axes of the paper's reward/KL frontier.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from alignpipe.generate import generate
from alignpipe.judge import Comparison
from pipeline_config.schema import SamplingConfig

TEXT_BASELINES = ("reference_text", "chosen")  # both come from the prompt's `reference` field


@dataclass
class EvalTables:
    win_rates: list[dict] = field(default_factory=list)  # report.WinRateRow
    reward_kl: list[dict] = field(default_factory=list)  # report.RewardKLRow
    samples: list[dict] = field(default_factory=list)
    verdicts: list[dict] = field(default_factory=list)
    # cost_usd turns None (unknown) once any judging call has no known price; metrics() then leaves it out
    usage: dict[str, Optional[float]] = field(default_factory=lambda: {"cost_usd": 0.0, "input_tokens": 0.0, "output_tokens": 0.0, "n_cached": 0.0})

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """Win rates first (they head the CLI summary), then reward/KL, then the judge's bill."""
        out: dict[str, float] = {}
        for r in self.win_rates:
            key = f"{prefix}win_rate/{r['baseline']}/t{r['temperature']:g}"
            if r["win_rate"] is not None:
                out[key] = r["win_rate"]
                out[key + "/stderr"] = r["stderr"]
            out[key + "/n_invalid"] = float(r["n_invalid"])
        for r in self.reward_kl:
            out[f"{prefix}reward/{r['policy']}/t{r['temperature']:g}"] = r["mean_reward"]
            if r.get("kl") is not None:
                out[f"{prefix}kl/{r['policy']}/t{r['temperature']:g}"] = r["kl"]
        out.update({f"{prefix}judge/{k}": v for k, v in self.usage.items() if v is not None})  # unknown cost: absent, not 0
        return out


def _mean_stderr(xs: Sequence[float]) -> tuple[float, Optional[float]]:
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, None
    var = sum((x - m) ** 2 for x in xs) / (len(xs) - 1)
    return m, math.sqrt(var / len(xs))


def evaluate_policy(
    *,
    policy,
    sft,
    tokenizer,
    prompts: Sequence[dict],
    temperatures: Sequence[float],
    baselines: Sequence[str],
    generation: SamplingConfig,
    judge,
    judged_text: Callable[[str, str], str],
    seed: int,
    chat_template: bool = False,
    compute_kl: bool = False,
    kl_fn: Optional[Callable] = None,
) -> EvalTables:
    """Sample, judge and tabulate. `judged_text(prompt, completion)` is what the judge and reward see."""
    needs_sft = "sft" in baselines or judge.backend.name == "reward" or compute_kl
    if needs_sft and sft is None:
        raise ValueError("evaluation needs the SFT model (baseline 'sft', a reward judge or compute_kl)")
    for b in baselines:
        if b in TEXT_BASELINES and any(p.get("reference") is None for p in prompts):
            raise ValueError(f"evaluate.baselines: '{b}' needs prompts with reference texts; this dataset has none")
    texts = [p["prompt"] for p in prompts]
    tables = EvalTables()
    gen = lambda model, t, what: generate(  # noqa: E731
        model, tokenizer, texts, max_new_tokens=generation.max_new_tokens, temperature=t, top_p=generation.top_p,
        batch_size=generation.batch_size, seed=seed, chat_template=chat_template, desc=f"{what} @ T={t:g}",
    )  # fmt: skip
    for t in temperatures:
        pol = gen(policy, t, "policy").texts
        ref = gen(sft, t, "SFT").texts if needs_sft else None
        for i, p in enumerate(prompts):
            tables.samples.append({"temperature": t, "index": i, "prompt": p["prompt"], "policy": pol[i], "sft": ref[i] if ref else None, "reference": p.get("reference")})
        for b in baselines:
            other = ref if b == "sft" else [p["reference"] for p in prompts]
            items = [
                Comparison(prompt=p["prompt"], policy=judged_text(p["prompt"], a), baseline=judged_text(p["prompt"], o))
                for p, a, o in zip(prompts, pol, other)
            ]
            res = judge.judge(items, desc=f"judging vs {b} @ T={t:g}")
            tables.win_rates.append({"temperature": t, "baseline": b, "win_rate": res.win_rate, "stderr": res.stderr, "n_valid": res.n_valid, "n_invalid": res.n_invalid})
            for k, so_far in tables.usage.items():
                value = getattr(res, k)
                tables.usage[k] = None if so_far is None or value is None else so_far + float(value)
            for i, verdicts in enumerate(res.by_item()):
                for v in verdicts:
                    tables.verdicts.append({"temperature": t, "baseline": b, "index": i, "policy_wins": v.policy_wins, "order": v.order, "cached": v.cached, "raw": v.raw})
        if judge.backend.name == "reward":
            for name, samples in (("dpo", pol), ("sft", ref)):
                mean, se = _mean_stderr(judge.scores([judged_text(p, s) for p, s in zip(texts, samples)]))
                kl = None
                if compute_kl:
                    kl = _mean_stderr(kl_fn(texts, samples))[0] if name == "dpo" else 0.0
                tables.reward_kl.append({"policy": name, "temperature": t, "mean_reward": mean, "reward_stderr": se, "kl": kl})
    return tables
