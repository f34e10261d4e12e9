"""Several samples per evaluation prompt (evaluate/ood `samples_per_prompt`), the per-prompt unit of
every interval, the paired mean reward difference of a reward judge, and which rows get an LC win rate."""
import numpy as np
import pytest

from alignpipe.intervals import stderr, t_interval, win_rate_ci
from alignpipe.evaluation import REWARD_JUDGE_LC_NOTE, evaluate_policy, per_prompt, win_rate_row
from alignpipe.judge.aggregate import summarize
from alignpipe.judge.ordering import BASELINE_FIRST, POLICY_FIRST
from alignpipe.judge.records import Verdict


def _v(win, order=POLICY_FIRST):
    return Verdict(win, "raw", order, False, 1, 1, 0.0)


def test_per_prompt_means_leave_invalid_samples_out():
    assert per_prompt([1.0, 0.0, None, None, 0.5, None], 2) == [0.5, None, 0.5]
    with pytest.raises(ValueError, match="5 values do not split into prompts of 2 samples"):
        per_prompt([1.0] * 5, 2)


def test_a_row_with_k_samples_is_over_prompts():
    # 3 prompts x 2 samples, judged in both orders: prompt 0 wins both; prompt 1 one win, one
    # order-inconsistent tie; prompt 2's first comparison has one invalid order (invalid), its second loses
    pairs = [(1.0, 1.0), (1.0, 1.0), (1.0, 1.0), (1.0, 0.0), (1.0, None), (0.0, 0.0)]
    result = summarize([_v(a, POLICY_FIRST) if j == 0 else _v(b, BASELINE_FIRST) for a, b in pairs for j in (0, 1)], 2)
    row = win_rate_row(result, temperature=1.0, baseline="sft", policy_lengths=[5] * 6, baseline_lengths=[5] * 6,
                       headline=True, samples_per_prompt=2, reward_diffs=[0.2, 0.4, 0.1, -0.1, 0.3, -0.5])
    scores = [1.0, 0.75, 0.0]
    assert (row["win_rate"], row["n_valid"], row["n_invalid"], row["n_invalid_comparisons"]) == (pytest.approx(np.mean(scores)), 3, 0, 1)
    assert row["stderr"] == pytest.approx(stderr(scores)) and (row["ci_low"], row["ci_high"]) == pytest.approx(win_rate_ci(scores))
    diffs = [0.3, 0.0, -0.1]  # per prompt; the invalid comparison's reward difference still counts (it is measured)
    assert row["reward_diff"] == pytest.approx(np.mean(diffs))
    assert (row["reward_diff_ci_low"], row["reward_diff_ci_high"]) == pytest.approx(t_interval(diffs))
    assert row["lc_win_rate"] == pytest.approx(np.mean(scores)) and "no length differences" in row["lc_note"]


def test_an_llm_judges_row_gets_an_lc_win_rate_and_a_reward_judges_does_not():
    rng = np.random.default_rng(0)
    n = 64
    wins = list((rng.random(n) < 0.7).astype(float))
    result = summarize([_v(w) for w in wins], 1)
    lp, lb = list(rng.integers(20, 60, n)), list(rng.integers(20, 60, n))
    llm = win_rate_row(result, temperature=0.0, baseline="sft", policy_lengths=lp, baseline_lengths=lb, headline=True)
    assert llm["lc_note"] is None and llm["lc_ci_low"] < llm["lc_win_rate"] < llm["lc_ci_high"]
    assert llm["reward_diff"] is None and llm["reward_diff_ci_low"] is None
    reward = win_rate_row(result, temperature=0.0, baseline="sft", policy_lengths=lp, baseline_lengths=lb, headline=True, reward_judge=True)
    assert reward["lc_win_rate"] is None and reward["lc_ci_low"] is None and reward["lc_note"] == REWARD_JUDGE_LC_NOTE
    longer = win_rate_row(result, temperature=0.0, baseline="sft", policy_lengths=[x + 40 for x in lb], baseline_lengths=lb, headline=True)
    assert longer["lc_win_rate"] is None and longer["lc_note"].startswith("extreme length changes")


def test_evaluation_with_several_samples_per_prompt(tiny_model, tiny_model_dir, smol_tokenizer, tmp_path):
    from tiny_pipeline import perturbed_model as _perturbed

    from alignpipe.judge import make_judge
    from alignpipe.rewards import make_scorer
    from pipeline_config.schema import GenerationConfig, JudgeConfig

    prompts = ["The film was", "I watched it and", "Honestly the acting", "What a"]
    k = 3
    tables = evaluate_policy(
        policy=_perturbed(tiny_model_dir, scale=0.2), sft=tiny_model, tokenizer=smol_tokenizer,
        prompts=[{"prompt": p, "reference": None} for p in prompts], temperatures=[0.0, 1.0], headline_temperature=1.0,
        baselines=["sft"], generation=GenerationConfig(max_new_tokens=4, batch_size=6),
        judge=make_judge(JudgeConfig(backend="reward", reward="vader"), tmp_path), judged_text=lambda p, c: p + c,
        seed=0, compute_kl=True, samples_per_prompt=k,
    )  # fmt: skip
    at = {t: [s for s in tables.samples if s["temperature"] == t] for t in (0.0, 1.0)}
    assert [(s["index"], s["sample"]) for s in at[0.0]] == [(i, 0) for i in range(4)]  # greedy: one sample is all k
    assert [(s["index"], s["sample"]) for s in at[1.0]] == [(i, j) for i in range(4) for j in range(k)]
    assert all(len({s["policy"] for s in at[1.0] if s["index"] == i}) > 1 for i in range(4))  # k distinct samples
    vader = make_scorer("vader")
    reward = lambda s, side: vader.score([s["prompt"] + s[side]])[0]  # noqa: E731
    row = next(r for r in tables.win_rates if r["temperature"] == 1.0)
    verdicts = [v["policy_wins"] for v in tables.verdicts if v["temperature"] == 1.0]
    assert [(v["index"], v["sample"]) for v in tables.verdicts if v["temperature"] == 1.0] == [(i, j) for i in range(4) for j in range(k)]
    assert row["samples_per_prompt"] == k and row["n_valid"] == 4
    assert row["win_rate"] == pytest.approx(np.mean(per_prompt(verdicts, k)))
    diffs = per_prompt([reward(s, "policy") - reward(s, "sft") for s in at[1.0]], k)
    assert row["reward_diff"] == pytest.approx(np.mean(diffs))
    assert (row["reward_diff_ci_low"], row["reward_diff_ci_high"]) == pytest.approx(t_interval(diffs))
    dpo = next(r for r in tables.reward_kl if (r["policy"], r["temperature"]) == ("dpo", 1.0))
    assert dpo["mean_reward"] == pytest.approx(np.mean([reward(s, "policy") for s in at[1.0]]))
    by_prompt = per_prompt([reward(s, "policy") for s in at[1.0]], k)  # the mean reward's interval is over prompts
    assert (dpo["reward_ci_low"], dpo["reward_ci_high"]) == pytest.approx(t_interval(by_prompt))
    frontier = {r["label"]: r for r in tables.frontier}
    assert frontier["dpo"]["n"] == 4 and frontier["dpo"]["kl"] == dpo["kl"] > 0
    m = tables.metrics()
    assert m["win_rate/sft/t1/reward_diff"] == row["reward_diff"] and m["win_rate/sft/t1/reward_diff_ci_low"] == row["reward_diff_ci_low"]
    with pytest.raises(ValueError, match="samples_per_prompt must be >= 1, got 0"):
        evaluate_policy(policy=tiny_model, sft=tiny_model, tokenizer=smol_tokenizer, prompts=[{"prompt": "x"}], temperatures=[0.0],
                        baselines=["sft"], generation=GenerationConfig(max_new_tokens=2), judge=make_judge(JudgeConfig(backend="reward"), tmp_path),
                        judged_text=lambda p, c: c, seed=0, samples_per_prompt=0)  # fmt: skip


@pytest.mark.parametrize("section", ["evaluate", "ood"])
def test_samples_per_prompt_below_one_fails_at_load_in_one_line(section):
    from pipeline_config import load_config
    from pipeline_config.loading import ConfigError

    assert load_config("demo").evaluate.samples_per_prompt == 1 and load_config("demo").ood.samples_per_prompt == 1
    assert load_config("demo", overrides=[f"{section}.samples_per_prompt=4"]).model_dump()[section]["samples_per_prompt"] == 4
    with pytest.raises(ConfigError) as err:
        load_config("demo", overrides=[f"{section}.samples_per_prompt=0"])
    assert "\n" not in str(err.value) and f"{section}.samples_per_prompt" in str(err.value) and "greater than or equal to 1" in str(err.value)
