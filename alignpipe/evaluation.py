"""Win rates of the DPO policy against baselines, per sampling temperature, and the reward/KL frontier.

For each temperature the policy (and the SFT model, when it is a baseline or needed for reward)
samples `samples_per_prompt` completions per prompt; the judge compares policy vs each baseline,
sample j against sample j. Every win rate is over prompts (a prompt's score: the mean of its
comparisons) and comes with a continuity-corrected Wilson 95% CI (alignpipe.intervals), a
length-controlled win rate for judges that are not reward models (alignpipe.length_control,
AlpacaEval 2's regression, withheld with the reason when zero length difference is outside the
data) and the mean lengths of both sides, and for an order-sensitive judge the order checks
(disagreement between orders, share of "first shown wins").

With a scalar reward judge the mean reward of each policy's samples is reported per temperature,
and each win-rate row carries the paired mean reward difference (per prompt: DPO's samples' mean
reward minus the baseline's on the same prompt) with its t interval over prompts.
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

from alignpipe.intervals import stderr, t_interval, win_rate_ci
from alignpipe.generate import GenerationResult, generate, stream_seed
from alignpipe.judge import Comparison
from alignpipe.judge.usage import Usage, add_usage, empty_usage, result_usage, total_usage, usage_metrics
from alignpipe.kl import sampled_sequence_kl
from alignpipe.length_control import LengthControlled, length_controlled
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
    # what judging spent (alignpipe.judge.usage) per purpose (win_rate, human_agreement, best_of_n,
    # ...); cost_usd turns None (unknown) once any judgment has no known price, and metrics() then
    # leaves it out
    usage_by_purpose: dict[str, Usage] = field(default_factory=dict)

    @property
    def usage(self) -> Usage:
        """The spend in total."""
        return total_usage(self.usage_by_purpose)

    def add_usage(self, result, purpose: str = "win_rate") -> None:
        add_usage(self.usage_by_purpose.setdefault(purpose, empty_usage()), result_usage(result))

    def set_usage(self, by_purpose: dict[str, Usage]) -> None:
        """Every judgment of the stage (its judges' ledgers, Judge.usage), replacing what add_usage summed."""
        self.usage_by_purpose = {k: dict(v) for k, v in by_purpose.items()}

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """Headline win rates first (they head the CLI summary), then every row, rewards, KL, data, judge."""
        out: dict[str, float] = {}
        for r in sorted(self.win_rates, key=lambda r: not r.get("headline")):
            key = f"{prefix}win_rate/{r['baseline']}/t{r['temperature']:g}"
            if r["win_rate"] is not None:
                out[key] = r["win_rate"]
            if r.get("stderr") is not None:
                out[key + "/stderr"] = r["stderr"]
            for name in ("ci_low", "ci_high", "lc_win_rate", "lc_ci_low", "lc_ci_high", "reward_diff", "reward_diff_ci_low",
                         "reward_diff_ci_high", "order_disagreement", "first_wins_share", "mean_length_policy", "mean_length_baseline"):
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
        out.update(usage_metrics(self.usage_by_purpose, prefix))  # unknown cost: absent, not 0
        return out


def per_prompt(values: Sequence[Optional[float]], k: int) -> list[Optional[float]]:
    """Per-prompt means of values laid out prompt-major, k per prompt (sample j of prompt i at i*k + j);
    None values are left out, and a prompt with none is None. The unit of every interval is the prompt."""
    if k < 1 or len(values) % k:
        raise ValueError(f"{len(values)} values do not split into prompts of {k} samples")
    out: list[Optional[float]] = []
    for i in range(0, len(values), k):
        present = [v for v in values[i : i + k] if v is not None]
        out.append(sum(present) / len(present) if present else None)
    return out


def _ci_fields(prefix: str, ci: Optional[tuple[float, float]]) -> dict[str, Optional[float]]:
    return {f"{prefix}ci_low": ci[0] if ci else None, f"{prefix}ci_high": ci[1] if ci else None}


REWARD_JUDGE_LC_NOTE = "reward judge: length is part of what it scores, not a bias to remove"


def win_rate_row(result, *, temperature: float, baseline: str, policy_lengths: Sequence[int], baseline_lengths: Sequence[int],
                 headline: bool, samples_per_prompt: int = 1, reward_judge: bool = False,
                 reward_diffs: Optional[Sequence[float]] = None) -> dict[str, Any]:
    """One (temperature, baseline) row over prompts. `result` judged samples_per_prompt comparisons per
    prompt (prompt-major: sample j of the policy against sample j of the baseline); a prompt's score is
    the mean of its valid comparisons. Win rate, its stderr (sd of the prompt scores / sqrt(n)) and its
    continuity-corrected Wilson 95% CI (alignpipe.intervals) are over prompts; so is the LC win rate
    (alignpipe.length_control: per-prompt scores against per-prompt mean length differences), which a
    reward judge never gets (its note says why). reward_diffs (a reward judge's reward(policy sample) -
    reward(baseline sample), per comparison) give the paired mean reward difference and its t interval."""
    k = samples_per_prompt
    comparisons = result.item_wins
    scores = per_prompt(comparisons, k)
    valid = [i for i, s in enumerate(scores) if s is not None]
    ok = [c is not None for c in comparisons]
    lp = per_prompt([n if v else None for n, v in zip(policy_lengths, ok)], k)
    lb = per_prompt([n if v else None for n, v in zip(baseline_lengths, ok)], k)
    if reward_judge:
        lc = LengthControlled(None, None, REWARD_JUDGE_LC_NOTE)
    else:
        lc = length_controlled(scores, [x if x is not None else 0.0 for x in lp], [x if x is not None else 0.0 for x in lb])
    diff = per_prompt(reward_diffs, k) if reward_diffs is not None else None
    diff_ci = t_interval(diff) if diff is not None else None
    return {
        "temperature": temperature, "baseline": baseline, "headline": headline,
        "win_rate": sum(scores[i] for i in valid) / len(valid) if valid else None, "stderr": stderr(scores),
        **_ci_fields("", win_rate_ci(scores)),
        "lc_win_rate": lc.win_rate, **_ci_fields("lc_", lc.ci), "lc_note": lc.note,
        "n_valid": len(valid), "n_invalid": len(scores) - len(valid), "samples_per_prompt": k,
        "n_invalid_comparisons": sum(not v for v in ok),
        "order_disagreement": result.disagreement_rate, "first_wins_share": result.first_wins_share,
        "mean_length_policy": float(np.mean([lp[i] for i in valid])) if valid else None,
        "mean_length_baseline": float(np.mean([lb[i] for i in valid])) if valid else None,
        "reward_diff": float(np.mean([d for d in diff if d is not None])) if diff and any(d is not None for d in diff) else None,
        **_ci_fields("reward_diff_", diff_ci),
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
    best_of_n: int = 0,
    labeller: Optional[Labeller] = None,
    policy_step: Optional[int] = None,
    extra_policies: Sequence[ExtraPolicy] = (),
    best_of_n_oracle: bool = False,
    precision: Optional[str] = None,
    samples_per_prompt: int = 1,
) -> EvalTables:
    """Sample, judge and tabulate. `judged_text(prompt, completion)` is what the judge and reward see.
    best_of_n / labeller: the 'best_of_n' baseline's N and its picker; best_of_n_oracle: the picker is
    the evaluation's own reward (an oracle baseline), whose T=1 picks go on the frontier at the
    analytic KL bound of best-of-N, log N - (N-1)/N. extra_policies: more frontier points.
    precision: model.dtype, the autocast sampling runs under (KL is scored in fp32 regardless).
    Each sampled model draws from its own seed stream (stream_seed(seed, what)), deterministic in `seed`.
    samples_per_prompt (k): each policy samples k completions per prompt (one at T=0, where they would
    be the same greedy sample); sample j of DPO is judged against sample j of the baseline (k
    comparisons, not k x k: as informative per judge call and k times cheaper for a paid judge), a
    prompt's score is the mean of its k, and every interval is over prompts. Means of reward and KL
    are over all samples, their intervals over the per-prompt means."""
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
    if samples_per_prompt < 1:
        raise ValueError(f"samples_per_prompt must be >= 1, got {samples_per_prompt}")
    texts = [p["prompt"] for p in prompts]
    tables = EvalTables()
    k_at = lambda t: 1 if t == 0 else samples_per_prompt  # noqa: E731
    n_tokens = lambda s: len(tokenizer(s, add_special_tokens=False)["input_ids"])  # noqa: E731

    def gen(model, t: float, what: str, inputs: Sequence[str] = texts) -> GenerationResult:
        return generate(
            model, tokenizer, list(inputs), max_new_tokens=generation.max_new_tokens, temperature=t, top_p=generation.top_p,
            batch_size=generation.batch_size, seed=stream_seed(seed, what), chat_template=chat_template,
            desc=f"{what} @ T={t:g}", precision=precision,
        )  # fmt: skip

    def reward_of(samples: Sequence[str]) -> tuple[list[float], float, Optional[float], Optional[tuple[float, float]]]:
        """Per-sample rewards (k per prompt, prompt-major), their mean, and stderr / CI over prompts."""
        k = len(samples) // len(texts)
        scores = judge.scores([judged_text(p, s) for p, s in zip(_repeat(texts, k), samples)])
        by_prompt = per_prompt(scores, k)  # k each: their mean is the mean over all samples
        return scores, sum(by_prompt) / len(by_prompt), stderr(by_prompt), t_interval(by_prompt)

    def frontier_point(label: str, policy_name: str, step: Optional[int], model, samples: GenerationResult) -> dict:
        """One policy's point: mean reward and mean KL(policy || SFT) of its own T=1 samples."""
        _, mean, se, ci = reward_of(samples.texts)
        kls = [0.0] * len(samples.texts) if model is sft else sampled_sequence_kl(
            model, sft, samples.prompt_ids, samples.token_ids, pad_id=tokenizer.pad_token_id, batch_size=generation.batch_size)
        kl_ci = t_interval(per_prompt(kls, len(kls) // len(texts)))
        return {"label": label, "policy": policy_name, "dpo_step": step, "temperature": KL_TEMPERATURE,
                "mean_reward": mean, "reward_stderr": se, **_ci_fields("reward_", ci),
                "kl": sum(kls) / len(kls), **_ci_fields("kl_", kl_ci), "n": len(texts),
                "truncated": sum(not f for f in samples.finished), "max_new_tokens": generation.max_new_tokens}  # fmt: skip

    at_t1: dict[str, GenerationResult] = {}
    bon_at_t1: Optional[list[str]] = None
    for t in temperatures:
        k = k_at(t)
        shown, shown_prompts = _repeat(texts, k), _repeat(prompts, k)  # sample j of prompt i at i*k + j
        pol_gen = gen(policy, t, "policy", shown)
        ref_gen = gen(sft, t, "SFT", shown) if needs_sft else None
        pol, ref = pol_gen.texts, ref_gen.texts if ref_gen else None
        if t == KL_TEMPERATURE:
            at_t1 = {"dpo": pol_gen, **({"sft": ref_gen} if ref_gen else {})}
        bon, candidates = _best_of_n(gen, sft, shown, t, best_of_n, labeller) if "best_of_n" in baselines else (None, None)
        if t == KL_TEMPERATURE and bon is not None:
            bon_at_t1 = bon
        for i, p in enumerate(shown_prompts):
            tables.samples.append({
                "temperature": t, "index": i // k, "sample": i % k, "prompt": p["prompt"], "policy": pol[i], "sft": ref[i] if ref else None,
                "best_of_n": bon[i] if bon else None, "best_of_n_candidates": candidates[i] if candidates else None,
                "reference": p.get("reference"),
                "policy_tokens": pol_gen.num_new_tokens[i], "policy_finished": pol_gen.finished[i],
            })  # fmt: skip
        pol_lengths = [n_tokens(s) for s in pol]
        # a reward judge: every sample's reward, once (the reward table and the paired differences)
        rewards = {name: reward_of(x) for name, x in (("dpo", pol), ("sft", ref), ("best_of_n", bon)) if x is not None} if reward_judge else {}
        for b in baselines:
            other = ref if b == "sft" else bon if b == "best_of_n" else [p["reference"] for p in shown_prompts]
            items = [
                Comparison(prompt=p["prompt"], policy=judged_text(p["prompt"], a), baseline=judged_text(p["prompt"], o))
                for p, a, o in zip(shown_prompts, pol, other)
            ]
            res = judge.judge(items, desc=f"judging vs {b} @ T={t:g}", purpose="win_rate")
            tables.win_rates.append(win_rate_row(
                res, temperature=t, baseline=b, policy_lengths=pol_lengths, baseline_lengths=[n_tokens(o) for o in other],
                headline=t == headline_temperature, samples_per_prompt=k, reward_judge=reward_judge,
                reward_diffs=[a - o for a, o in zip(rewards["dpo"][0], (rewards[b] if b in rewards else reward_of(other))[0])] if reward_judge else None,
            ))  # fmt: skip
            tables.add_usage(res, "win_rate")
            for i, verdicts in enumerate(res.by_item()):
                for v in verdicts:
                    tables.verdicts.append({"temperature": t, "baseline": b, "index": i // k, "sample": i % k, "policy_wins": v.policy_wins, "order": v.order, "cached": v.cached, "raw": v.raw})
        for name, (_, mean, se, ci) in rewards.items():
            tables.reward_kl.append({"policy": name, "temperature": t, "mean_reward": mean, "reward_stderr": se, **_ci_fields("reward_", ci), "kl": None})
    if compute_kl:
        if "dpo" not in at_t1:  # no T=1 row: sample both policies at T=1 for the frontier only
            at_t1 = {name: gen(model, KL_TEMPERATURE, f"{what} (frontier)", _repeat(texts, k_at(KL_TEMPERATURE)))
                     for name, model, what in (("dpo", policy, "policy"), ("sft", sft, "SFT"))}
        tables.frontier.append(frontier_point("sft", "sft", 0, sft, at_t1["sft"]))
        tables.frontier.append(frontier_point("dpo", "dpo", policy_step, policy, at_t1["dpo"]))
        for extra in extra_policies:
            model = extra.load()
            tables.frontier.append(frontier_point(extra.label, "dpo", extra.dpo_step, model,
                                                  gen(model, KL_TEMPERATURE, extra.label, _repeat(texts, k_at(KL_TEMPERATURE)))))
            del model
        if best_of_n_oracle and bon_at_t1 is not None:
            tables.frontier.append(best_of_n_point(best_of_n, reward_of(bon_at_t1), len(texts)))
        tables.frontier.sort(key=lambda r: (r["policy"] != "sft", r["dpo_step"] is None, r["dpo_step"] or 0))
        kl_of = {r["label"]: r["kl"] for r in tables.frontier}
        for row in tables.reward_kl:  # only the T=1 rows get a KL
            if row["temperature"] == KL_TEMPERATURE and row["policy"] in kl_of:
                row["kl"] = kl_of[row["policy"]]
    return tables


def best_of_n_kl_bound(n: int) -> float:
    """The analytic KL(best-of-N || base) of N samples, log N - (N-1)/N nats (Stiennon et al. 2020), an
    upper bound on the actual KL (Beirami et al. 2024, "Theoretical guarantees on the best-of-n alignment policy")."""
    return math.log(n) - (n - 1) / n


def best_of_n_point(n: int, reward, n_prompts: int) -> dict:
    """The oracle best-of-N baseline on the frontier: its picks' mean reward at the KL bound (not measured)."""
    _, mean, se, ci = reward
    return {"label": f"best-of-{n}", "policy": "best_of_n", "dpo_step": None, "temperature": KL_TEMPERATURE,
            "mean_reward": mean, "reward_stderr": se, **_ci_fields("reward_", ci), "kl": best_of_n_kl_bound(n),
            "kl_ci_low": None, "kl_ci_high": None, "kl_is_bound": True, "oracle": True, "n": n_prompts,
            "series": f"best-of-{n} (oracle; KL: analytic bound)"}  # fmt: skip


def _repeat(xs: Sequence, k: int) -> list:
    """Each element k times in a row: prompt-major, as every per-sample list here is laid out."""
    return [x for x in xs for _ in range(k)]


def _best_of_n(gen, sft, prompts: list[str], t: float, n: int, labeller: Labeller) -> tuple[list[str], list[list[str]]]:
    """(picks, candidates): the paper's Best-of-N baseline, N SFT samples per prompt at temperature t
    and the one the labeller (pairs.labeler) scores highest. At T=0 the N samples are one greedy sample."""
    expanded = [p for p in prompts for _ in range(n)]
    candidates = gen(sft, t, f"SFT best-of-{n}", expanded).texts
    grouped = [candidates[i * n : (i + 1) * n] for i in range(len(prompts))]
    scores = labeller(prompts, grouped)
    return [group[max(range(n), key=lambda k: score[k])] for group, score in zip(grouped, scores)], grouped
