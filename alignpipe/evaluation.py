"""Win rates of the DPO policy against baselines, per sampling temperature, and the reward/KL frontier.

For each temperature the policy (and the SFT model, when it is a baseline or needed for reward)
samples one completion per prompt; the judge compares policy vs each baseline. Every win rate comes
with a percentile-bootstrap 95% CI over prompts (alignpipe.bootstrap), a length-controlled win rate
(alignpipe.length_control, AlpacaEval 2's regression) and the mean lengths of both sides, and for
an order-sensitive judge the order checks (disagreement between orders, share of "first shown wins").

With a scalar reward judge the mean reward of each policy's samples is reported per temperature.
KL(policy || SFT) is reported only for T=1 samples, scored on their own token ids (alignpipe.kl):
at any other temperature the samples are not drawn from the policy and the sum is not its KL. The
frontier (the paper's Figure 2) is one point per *policy* at T=1: the final DPO policy, optional
intermediate checkpoints, and the SFT model itself (KL 0).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

from alignpipe.bootstrap import mean_ci, statistic_ci
from alignpipe.generate import GenerationResult, generate
from alignpipe.judge import Comparison
from alignpipe.kl import sampled_sequence_kl
from alignpipe.length_control import lc_win_rate
from pipeline_config.schema import SamplingConfig

TEXT_BASELINES = ("reference_text", "chosen")  # both come from the prompt's `reference` field
KL_TEMPERATURE = 1.0  # the only temperature whose samples come from the policy itself

# (prompts, candidates per prompt) -> the labeller's score of each candidate (best-of-N baseline)
Labeller = Callable[[list[str], list[list[str]]], list[list[float]]]


@dataclass(frozen=True)
class ExtraPolicy:
    """Another policy to put on the frontier (an intermediate DPO checkpoint): sampled at T=1 only."""

    label: str  # e.g. "dpo@step10"
    dpo_step: int
    load: Callable[[], Any]  # loads the model when it is its turn (one extra model in memory at a time)


@dataclass
class EvalTables:
    win_rates: list[dict] = field(default_factory=list)  # report.WinRateRow
    reward_kl: list[dict] = field(default_factory=list)  # report.RewardKLRow: mean reward per policy and temperature
    frontier: list[dict] = field(default_factory=list)  # report.FrontierRow: one point per policy, T=1
    samples: list[dict] = field(default_factory=list)
    verdicts: list[dict] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)  # where the prompts came from, overlaps removed
    judge_agreement: Optional[dict] = None  # alignpipe.judge.agreement row
    # cost_usd turns None (unknown) once any judging call has no known price; metrics() then leaves it out
    usage: dict[str, Optional[float]] = field(default_factory=lambda: {"cost_usd": 0.0, "input_tokens": 0.0, "output_tokens": 0.0, "n_cached": 0.0})

    def add_usage(self, result) -> None:
        for k, so_far in self.usage.items():
            value = getattr(result, k)
            self.usage[k] = None if so_far is None or value is None else so_far + float(value)

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """Headline win rates first (they head the CLI summary), then every row, rewards, KL, data, judge."""
        out: dict[str, float] = {}
        for r in sorted(self.win_rates, key=lambda r: not r.get("headline")):
            key = f"{prefix}win_rate/{r['baseline']}/t{r['temperature']:g}"
            if r["win_rate"] is not None:
                out[key] = r["win_rate"]
                out[key + "/stderr"] = r["stderr"]
            for name in ("ci_low", "ci_high", "lc_win_rate", "order_disagreement", "first_wins_share",
                         "mean_length_policy", "mean_length_baseline"):
                if r.get(name) is not None:
                    out[f"{key}/{name}"] = float(r[name])
            out[key + "/n_invalid"] = float(r["n_invalid"])
        for r in self.reward_kl:
            out[f"{prefix}reward/{r['policy']}/t{r['temperature']:g}"] = r["mean_reward"]
            if r.get("kl") is not None:
                out[f"{prefix}kl/{r['policy']}/t{r['temperature']:g}"] = r["kl"]
        for r in self.frontier:
            if r["label"] != r["policy"]:  # checkpoints; the final policy's point is already above
                out[f"{prefix}frontier/{r['label']}/reward"] = r["mean_reward"]
                out[f"{prefix}frontier/{r['label']}/kl"] = r["kl"]
        out.update({f"{prefix}data/{k}": float(v) for k, v in self.data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        if self.judge_agreement and self.judge_agreement.get("agreement") is not None:
            out[f"{prefix}judge/human_agreement"] = self.judge_agreement["agreement"]
            out[f"{prefix}judge/human_agreement_n"] = float(self.judge_agreement["n"])
        out.update({f"{prefix}judge/{k}": v for k, v in self.usage.items() if v is not None})  # unknown cost: absent, not 0
        return out


def _mean_stderr(xs: Sequence[float]) -> tuple[float, Optional[float]]:
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, None
    var = sum((x - m) ** 2 for x in xs) / (len(xs) - 1)
    return m, math.sqrt(var / len(xs))


def _ci_fields(prefix: str, ci: Optional[tuple[float, float]]) -> dict[str, Optional[float]]:
    return {f"{prefix}ci_low": ci[0] if ci else None, f"{prefix}ci_high": ci[1] if ci else None}


def win_rate_row(result, *, temperature: float, baseline: str, policy_lengths: Sequence[int], baseline_lengths: Sequence[int],
                 n_resamples: int, seed: int, headline: bool) -> dict[str, Any]:
    """One (temperature, baseline) row: raw and length-controlled win rates with bootstrap CIs over
    prompts, mean lengths, order checks."""
    scores = result.item_wins
    valid = [i for i, s in enumerate(scores) if s is not None]
    ci = mean_ci(scores, n_resamples=n_resamples, seed=seed)
    lc = lc_win_rate(scores, policy_lengths, baseline_lengths)
    y = np.asarray([scores[i] for i in valid], dtype=np.float64)
    lp = np.asarray([policy_lengths[i] for i in valid], dtype=np.float64)
    lb = np.asarray([baseline_lengths[i] for i in valid], dtype=np.float64)
    lc_ci = statistic_ci(len(valid), lambda idx: lc_win_rate(list(y[idx]), lp[idx], lb[idx]), n_resamples=n_resamples, seed=seed) if valid else None
    return {
        "temperature": temperature, "baseline": baseline, "headline": headline,
        "win_rate": result.win_rate, "stderr": result.stderr, **_ci_fields("", ci),
        "lc_win_rate": lc, **_ci_fields("lc_", lc_ci),
        "n_valid": result.n_valid, "n_invalid": result.n_invalid,
        "order_disagreement": result.disagreement_rate, "first_wins_share": result.first_wins_share,
        "mean_length_policy": float(lp.mean()) if valid else None,
        "mean_length_baseline": float(lb.mean()) if valid else None,
    }  # fmt: skip


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
    headline_temperature: Optional[float] = None,
    chat_template: bool = False,
    compute_kl: bool = False,
    bootstrap_samples: int = 2000,
    best_of_n: int = 0,
    labeller: Optional[Labeller] = None,
    policy_step: Optional[int] = None,
    extra_policies: Sequence[ExtraPolicy] = (),
) -> EvalTables:
    """Sample, judge and tabulate. `judged_text(prompt, completion)` is what the judge and reward see.
    best_of_n / labeller: the 'best_of_n' baseline's N and its picker. extra_policies: more frontier points."""
    reward_judge = judge.backend.name == "reward"
    needs_sft = "sft" in baselines or reward_judge or compute_kl
    if needs_sft and sft is None:
        raise ValueError("evaluation needs the SFT model (baseline 'sft', a reward judge or compute_kl)")
    if compute_kl and not reward_judge:
        raise ValueError("compute_kl: the reward/KL frontier needs a reward judge")
    if "best_of_n" in baselines and (labeller is None or best_of_n < 2):
        raise ValueError("baseline 'best_of_n' needs N >= 2 and a labeller")
    for b in baselines:
        if b in TEXT_BASELINES and any(p.get("reference") is None for p in prompts):
            raise ValueError(f"evaluate.baselines: '{b}' needs prompts with reference texts; this dataset has none")
    texts = [p["prompt"] for p in prompts]
    tables = EvalTables()
    n_tokens = lambda s: len(tokenizer(s, add_special_tokens=False)["input_ids"])  # noqa: E731

    def gen(model, t: float, what: str, inputs: Sequence[str] = texts) -> GenerationResult:
        return generate(
            model, tokenizer, list(inputs), max_new_tokens=generation.max_new_tokens, temperature=t, top_p=generation.top_p,
            batch_size=generation.batch_size, seed=seed, chat_template=chat_template, desc=f"{what} @ T={t:g}",
        )  # fmt: skip

    def reward_of(samples: Sequence[str]) -> tuple[list[float], float, Optional[float], Optional[tuple[float, float]]]:
        scores = judge.scores([judged_text(p, s) for p, s in zip(texts, samples)])
        mean, se = _mean_stderr(scores)
        return scores, mean, se, mean_ci(scores, n_resamples=bootstrap_samples, seed=seed)

    def frontier_point(label: str, policy_name: str, step: Optional[int], model, samples: GenerationResult) -> dict:
        """One policy's point: mean reward and mean KL(policy || SFT) of its own T=1 samples."""
        _, mean, se, ci = reward_of(samples.texts)
        kls = [0.0] * len(texts) if model is sft else sampled_sequence_kl(
            model, sft, samples.prompt_ids, samples.token_ids, pad_id=tokenizer.pad_token_id, batch_size=generation.batch_size)
        kl_ci = mean_ci(kls, n_resamples=bootstrap_samples, seed=seed)
        return {"label": label, "policy": policy_name, "dpo_step": step, "temperature": KL_TEMPERATURE,
                "mean_reward": mean, "reward_stderr": se, **_ci_fields("reward_", ci),
                "kl": sum(kls) / len(kls), **_ci_fields("kl_", kl_ci), "n": len(texts),
                "truncated": sum(not f for f in samples.finished)}  # fmt: skip

    at_t1: dict[str, GenerationResult] = {}
    for t in temperatures:
        pol_gen = gen(policy, t, "policy")
        ref_gen = gen(sft, t, "SFT") if needs_sft else None
        pol, ref = pol_gen.texts, ref_gen.texts if ref_gen else None
        if t == KL_TEMPERATURE:
            at_t1 = {"dpo": pol_gen, **({"sft": ref_gen} if ref_gen else {})}
        bon, candidates = _best_of_n(gen, sft, texts, t, best_of_n, labeller) if "best_of_n" in baselines else (None, None)
        for i, p in enumerate(prompts):
            tables.samples.append({
                "temperature": t, "index": i, "prompt": p["prompt"], "policy": pol[i], "sft": ref[i] if ref else None,
                "best_of_n": bon[i] if bon else None, "best_of_n_candidates": candidates[i] if candidates else None,
                "reference": p.get("reference"),
                "policy_tokens": pol_gen.num_new_tokens[i], "policy_finished": pol_gen.finished[i],
            })  # fmt: skip
        pol_lengths = [n_tokens(s) for s in pol]
        for b in baselines:
            other = ref if b == "sft" else bon if b == "best_of_n" else [p["reference"] for p in prompts]
            items = [
                Comparison(prompt=p["prompt"], policy=judged_text(p["prompt"], a), baseline=judged_text(p["prompt"], o))
                for p, a, o in zip(prompts, pol, other)
            ]
            res = judge.judge(items, desc=f"judging vs {b} @ T={t:g}")
            tables.win_rates.append(win_rate_row(
                res, temperature=t, baseline=b, policy_lengths=pol_lengths, baseline_lengths=[n_tokens(o) for o in other],
                n_resamples=bootstrap_samples, seed=seed, headline=t == headline_temperature,
            ))  # fmt: skip
            tables.add_usage(res)
            for i, verdicts in enumerate(res.by_item()):
                for v in verdicts:
                    tables.verdicts.append({"temperature": t, "baseline": b, "index": i, "policy_wins": v.policy_wins, "order": v.order, "cached": v.cached, "raw": v.raw})
        if reward_judge:
            for name, samples in (("dpo", pol), ("sft", ref), ("best_of_n", bon)):
                if samples is not None:
                    _, mean, se, ci = reward_of(samples)
                    tables.reward_kl.append({"policy": name, "temperature": t, "mean_reward": mean, "reward_stderr": se, **_ci_fields("reward_", ci), "kl": None})
    if compute_kl:
        if "dpo" not in at_t1:  # no T=1 row: sample both policies at T=1 for the frontier only
            at_t1 = {"dpo": gen(policy, KL_TEMPERATURE, "policy (frontier)"), "sft": gen(sft, KL_TEMPERATURE, "SFT (frontier)")}
        tables.frontier.append(frontier_point("sft", "sft", 0, sft, at_t1["sft"]))
        tables.frontier.append(frontier_point("dpo", "dpo", policy_step, policy, at_t1["dpo"]))
        for extra in extra_policies:
            model = extra.load()
            tables.frontier.append(frontier_point(extra.label, "dpo", extra.dpo_step, model, gen(model, KL_TEMPERATURE, extra.label)))
            del model
        tables.frontier.sort(key=lambda r: (r["policy"] != "sft", r["dpo_step"] is None, r["dpo_step"] or 0))
        kl_of = {r["label"]: r["kl"] for r in tables.frontier}
        for row in tables.reward_kl:  # only the T=1 rows get a KL
            if row["temperature"] == KL_TEMPERATURE and row["policy"] in kl_of:
                row["kl"] = kl_of[row["policy"]]
    return tables


def _best_of_n(gen, sft, prompts: list[str], t: float, n: int, labeller: Labeller) -> tuple[list[str], list[list[str]]]:
    """(picks, candidates): the paper's Best-of-N baseline, N SFT samples per prompt at temperature t
    and the one the labeller (pairs.labeler) scores highest. At T=0 the N samples are one greedy sample."""
    expanded = [p for p in prompts for _ in range(n)]
    candidates = gen(sft, t, f"SFT best-of-{n}", expanded).texts
    grouped = [candidates[i * n : (i + 1) * n] for i in range(len(prompts))]
    scores = labeller(prompts, grouped)
    return [group[max(range(n), key=lambda k: score[k])] for group, score in zip(grouped, scores)], grouped
