"""Evaluation measures what its labels say (issue 16, items 3, 4, 5, 7).

- no training text in evaluation: mixed training/evaluation sources for one task are refused, and an
  evaluation prompt cut from a review SFT saw whole is removed;
- every paid judgment is counted, per purpose (win rates, judge vs humans, best-of-N ranking);
- the KL is scored in fp32 whatever model.dtype;
- samples come from the model itself (its generation_config's logit processors are off), DPO and SFT
  draw from different seeds, best-of-N picked by the evaluation's own reward is an oracle on the
  frontier at its analytic KL bound, the frontier shows the token cap and the share cut there, the
  judge-vs-humans line says what it measured, the OOD source label is the file read, and the run's
  wall time is measured by the run while the report labels its stored sum as such.
"""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from alignpipe.evaluation import evaluate_policy
from alignpipe.generate import generate
from alignpipe.judge import make_judge
from alignpipe.kl import sampled_sequence_kl
from alignpipe.models import load_causal_lm
from alignpipe.stages.artifacts import write_pairs
from alignpipe.stages.base import StageContext
from alignpipe.stages.evaluate_stage import EvaluateSlice, OODSlice, run as run_eval_stage
from pipeline_config.schema import DataConfig, EvaluateConfig, GenerationConfig, JudgeConfig, OODConfig, PairsConfig

from tiny_pipeline import PROMPTS
from tiny_pipeline import perturbed_model as _perturbed


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _upstream(tmp_path, tiny_model_dir, smol_tokenizer, pair_prompts):
    """sft/ (the tiny model), dpo/ (a perturbed copy) and pairs/ (pairs on `pair_prompts`) as the stages write them."""
    dirs = {name: tmp_path / name for name in ("sft", "dpo", "pairs")}
    load_causal_lm(tiny_model_dir).save_pretrained(dirs["sft"] / "model")
    _perturbed(tiny_model_dir, scale=0.2).save_pretrained(dirs["dpo"] / "model")
    for name in ("sft", "dpo"):
        smol_tokenizer.save_pretrained(dirs[name] / "model")
    dirs["pairs"].mkdir()
    write_pairs(dirs["pairs"], [{"prompt": p, "chosen": " good", "rejected": " bad", "prompt_index": i} for i, p in enumerate(pair_prompts)])
    return dirs


def _run_stage(tmp_path, inputs, config):
    out = tmp_path / "out"
    out.mkdir()
    metrics = run_eval_stage(StageContext(config=config, out_dir=out, inputs=inputs, say=lambda line: None))
    tables = {name: json.loads((out / f"{name}.json").read_text()) for name in ("win_rates", "frontier", "data", "reward_kl")}
    return metrics, tables, [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------------------------
# Item 3: no training text in evaluation
# --------------------------------------------------------------------------------------------


def test_a_test_split_beside_no_training_file_is_refused_not_mixed_with_the_builtin_sample(shared_data, tmp_path):
    """Only <dir>/imdb.test.jsonl (aclImdb test reviews): training would fall back to the built-in sample,
    which is aclImdb test reviews too (42 of 256 evaluation reviews were training reviews). Refused, in one line."""
    from alignpipe.data import sft_examples, validate_task_data
    from alignpipe.stages.evaluate_stage import preflight

    data = tmp_path / "data"
    data.mkdir()
    shutil.copyfile(shared_data / "imdb.jsonl", data / "imdb.test.jsonl")
    cfg = DataConfig(task="imdb", dir=str(data), builtin_fallback=True, eval_size=256, sft_size=64)
    with pytest.raises(ValueError) as e:
        validate_task_data(cfg)
    message = str(e.value)
    assert "\n" not in message and f"data.dir {data}" in message and "one source" in message
    assert "built-in imdb sample" in message and str(data / "imdb.test.jsonl") in message
    with pytest.raises(ValueError, match="one source"):
        sft_examples(cfg)  # the training side refuses too, not only the preflight
    with pytest.raises(ValueError, match="one source"):
        preflight(EvaluateSlice(evaluate=EvaluateConfig(judge=JudgeConfig(backend="reward")), data=cfg, pairs=PairsConfig(),
                                chat_template=False, dtype="float32", seed=0))  # fmt: skip


def test_an_evaluation_prompt_cut_from_a_review_sft_saw_is_removed(tmp_path, tiny_model_dir, smol_tokenizer):
    """imdb.jsonl (training) and imdb.test.jsonl share reviews. A shared review that SFT saw whole, but no
    DPO pair was cut from, used to open an evaluation prompt (its SFT prompt is empty): now it is removed."""
    data = tmp_path / "data"
    data.mkdir()
    words = ["apple", "banana", "cherry", "dragon", "eagle", "falcon", "garden", "harbor", "island", "jungle"]
    openings = [f"{a.title()} {b}" for a in words for b in words[:4]]  # 40 distinct two-word openings
    reviews = [f"{o} was the first thing I noticed, and review {i} goes on from there." for i, o in enumerate(openings)]
    _write_jsonl(data / "imdb.jsonl", [{"text": r, "label": i % 2} for i, r in enumerate(reviews[:30])])
    _write_jsonl(data / "imdb.test.jsonl", [{"text": r, "label": i % 2} for i, r in enumerate(reviews[20:])])  # 10 shared
    cfg = DataConfig(task="imdb", dir=str(data), sft_size=30, prompt_size=2, eval_size=20, prefix_tokens=(3, 5))
    from alignpipe.data import generation_prompts, sft_examples

    sft_texts = {ex["completion"] for ex in sft_examples(cfg)}
    pair_prompts = [p["prompt"] for p in generation_prompts(cfg, "train", 2, smol_tokenizer)]
    candidates = generation_prompts(cfg, "eval", 20, smol_tokenizer)
    source = {c["prompt"]: next(r for r in reviews if r.startswith(c["prompt"])) for c in candidates}  # distinct openings
    leaking = [c for c in candidates if source[c["prompt"]] in sft_texts]
    assert len(leaking) == 10  # every shared review: SFT saw all 30 training reviews whole
    inputs = _upstream(tmp_path, tiny_model_dir, smol_tokenizer, pair_prompts)
    config = EvaluateSlice(
        evaluate=EvaluateConfig(n_prompts=20, temperatures=[0.0], headline_temperature=0.0, generation={"max_new_tokens": 2, "batch_size": 20},
                                judge=JudgeConfig(backend="reward", reward="vader")),
        data=cfg, pairs=PairsConfig(), chat_template=False, dtype="float32", seed=0,
    )  # fmt: skip
    metrics, tables, samples = _run_stage(tmp_path, inputs, config)
    assert tables["data"]["overlap_removed"] == 10 and tables["data"]["prompts"] == 10 and metrics["data/overlap_removed"] == 10
    leaked_prompts = {c["prompt"] for c in leaking}
    assert not {s["prompt"] for s in samples} & leaked_prompts  # leaks 0


# --------------------------------------------------------------------------------------------
# Item 4: every paid judgment is counted, per purpose
# --------------------------------------------------------------------------------------------


def test_cost_counts_human_agreement_and_the_best_of_n_ranking(openai_env, shared_data, tmp_path, tiny_model_dir, smol_tokenizer):
    """An LLM judge for the win rates, the judge-vs-humans check and the best-of-N Copeland ranking:
    judge/cost_usd and the token counts are what the endpoint billed for all of them."""
    from fake_openai_server import FakeOpenAIServer
    from judge_items import PRICE_IN, PRICE_OUT

    with FakeOpenAIServer() as server:
        judge = JudgeConfig(backend="openai", model="judge-model", base_url=server.base_url, template="dialogue", both_orders=True,
                            max_retries=2, timeout_s=5.0, price_per_1k_input=PRICE_IN, price_per_1k_output=PRICE_OUT)  # fmt: skip
        data = DataConfig(task="hh", dir=str(shared_data), sft_size=8, eval_size=3)
        config = EvaluateSlice(
            evaluate=EvaluateConfig(n_prompts=3, temperatures=[0.0], headline_temperature=0.0, baselines=["chosen", "best_of_n"], best_of_n=3,
                                    human_agreement=3, generation={"max_new_tokens": 3, "batch_size": 8}, judge=judge),
            data=data, pairs=PairsConfig(labeler="judge", judge=judge), chat_template=False, dtype="float32", seed=0,
        )  # fmt: skip
        inputs = _upstream(tmp_path, tiny_model_dir, smol_tokenizer, ["unused prompt"])
        metrics, tables, _ = _run_stage(tmp_path, inputs, config)
        billed = server.prompt_tokens / 1000 * PRICE_IN + server.completion_tokens / 1000 * PRICE_OUT
        n_requests = server.n_requests
    n = tables["data"]["prompts"]
    # win rates: 2 baselines x n items x 2 orders; best-of-3: 3 pairs x n x 2; humans: 3 pairs x 2 (at T=0 the 3
    # best-of-N candidates are one greedy text, so their pairs are identical and asked once)
    assert metrics["judge/cost_usd"] == pytest.approx(billed) and billed > 0
    assert metrics["judge/input_tokens"] == server.prompt_tokens and metrics["judge/output_tokens"] == server.completion_tokens
    assert metrics["judge/judgments"] == n_requests
    per_purpose = {p: metrics[f"judge/{p}/judgments"] for p in ("win_rate", "human_agreement", "best_of_n")}
    assert per_purpose["human_agreement"] == 6 and per_purpose["win_rate"] == 2 * n * 2 and per_purpose["best_of_n"] >= n * 2
    assert sum(per_purpose.values()) == n_requests
    assert sum(metrics[f"judge/{p}/cost_usd"] for p in per_purpose) == pytest.approx(billed)


def test_cost_counts_judge_labelled_pairs(openai_env, shared_data, tmp_path, tiny_model_dir, smol_tokenizer):
    """pairs.labeler=judge with a priced LLM judge: the pairs stage's judge/cost_usd and tokens are what the
    endpoint billed, under judge/pair_labelling/* too (before: judged, paid, and in no metric)."""
    from fake_openai_server import FakeOpenAIServer
    from judge_items import PRICE_IN, PRICE_OUT

    from alignpipe.stages.pairs_stage import LABELLING, PairsSlice, run_sampled

    inputs = _upstream(tmp_path, tiny_model_dir, smol_tokenizer, ["unused prompt"])
    with FakeOpenAIServer() as server:
        judge = JudgeConfig(backend="openai", model="judge-model", base_url=server.base_url, template="dialogue", both_orders=True,
                            max_retries=2, timeout_s=5.0, price_per_1k_input=PRICE_IN, price_per_1k_output=PRICE_OUT)  # fmt: skip
        config = PairsSlice(data=DataConfig(task="hh", dir=str(shared_data), prompt_size=3, eval_size=2),
                            pairs=PairsConfig(labeler="judge", judge=judge, samples_per_prompt=3, generation={"max_new_tokens": 3}),
                            chat_template=False, dtype="float32", seed=0)  # fmt: skip
        out = tmp_path / "pairs-out"
        out.mkdir()
        # the fake judge ties texts without its marker, so no pairs: the stage's metrics before that check
        *_, metrics = run_sampled(StageContext(config=config, out_dir=out, inputs={"sft": inputs["sft"]}, say=lambda line: None))
        billed = server.prompt_tokens / 1000 * PRICE_IN + server.completion_tokens / 1000 * PRICE_OUT
        n_requests = server.n_requests
    assert n_requests > 0 and metrics["judge/judgments"] == metrics[f"judge/{LABELLING}/judgments"] == n_requests
    assert metrics["judge/cost_usd"] == pytest.approx(billed) and metrics[f"judge/{LABELLING}/cost_usd"] == pytest.approx(billed)
    assert metrics["judge/input_tokens"] == server.prompt_tokens and metrics["judge/output_tokens"] == server.completion_tokens


def test_a_judge_counts_what_it_was_paid_for_even_when_a_call_fails(openai_env, tmp_path):
    from fake_openai_server import FakeOpenAIServer
    from judge_items import items, judge_for

    from alignpipe.judge import JudgeInvalidVerdictsError

    with FakeOpenAIServer(weak_models=("weak-judge",)) as server:
        judge = judge_for(server.base_url, tmp_path, model="weak-judge")
        with pytest.raises(JudgeInvalidVerdictsError):
            judge.judge(items(6), purpose="win_rate")
        spent = judge.usage.by_purpose["win_rate"]
        # the answers that arrived before the gate stopped the call were paid for: counted, not lost
        assert 0 < spent["judgments"] <= server.n_requests and spent["input_tokens"] > 0 and spent["cost_usd"] > 0


# --------------------------------------------------------------------------------------------
# Item 5: KL in fp32 whatever the training dtype
# --------------------------------------------------------------------------------------------


def _dtype_spy(model, seen: list):
    """Records the dtype of every Linear input in `model` (backbone and LM head)."""
    hooks = [m.register_forward_pre_hook(lambda mod, args: seen.append(args[0].dtype)) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return hooks


def test_kl_is_scored_in_fp32_under_bf16_autocast_and_bf16_weights(tiny_model, tiny_model_dir, smol_tokenizer):
    other = _perturbed(tiny_model_dir, scale=0.02)
    g = generate(tiny_model, smol_tokenizer, PROMPTS, max_new_tokens=6, temperature=1.0, seed=0)
    pad = smol_tokenizer.pad_token_id
    fp32 = sampled_sequence_kl(tiny_model, other, g.prompt_ids, g.token_ids, pad_id=pad)
    seen: list = []
    hooks = _dtype_spy(tiny_model, seen) + _dtype_spy(other, seen)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():  # the training regime model.dtype bfloat16 implies
            under_autocast = sampled_sequence_kl(tiny_model, other, g.prompt_ids, g.token_ids, pad_id=pad)
            ids = torch.tensor([g.prompt_ids[0] + g.token_ids[0]])
            lp, lq = (m(ids).logits.float().log_softmax(-1)[0] for m in (tiny_model, other))  # what bf16 compute gives
    finally:
        for h in hooks:
            h.remove()
    assert seen and set(seen[: len(seen) // 2]) == {torch.float32}  # the KL's forwards (the naive check's come after)
    assert under_autocast == pytest.approx(fp32, rel=1e-5, abs=1e-7)
    n0 = len(g.prompt_ids[0])
    bf16_kl0 = float((lp.exp() * (lp - lq)).sum(-1)[n0 - 1 : n0 - 1 + len(g.token_ids[0])].sum())
    assert abs(bf16_kl0 - fp32[0]) > 10 * abs(under_autocast[0] - fp32[0])  # bf16 compute would be off

    # bf16 weights: computed in fp32 (from those weights), and the models are handed back in bf16
    p16, q16 = load_causal_lm(tiny_model_dir).eval().to(torch.bfloat16), other.to(torch.bfloat16)
    p32, q32 = load_causal_lm(tiny_model_dir).eval().to(torch.bfloat16).float(), _perturbed(tiny_model_dir, scale=0.02).to(torch.bfloat16).float()
    on_bf16 = sampled_sequence_kl(p16, q16, g.prompt_ids, g.token_ids, pad_id=pad)
    assert on_bf16 == pytest.approx(sampled_sequence_kl(p32, q32, g.prompt_ids, g.token_ids, pad_id=pad), rel=1e-5, abs=1e-7)
    assert {p.dtype for p in (*p16.parameters(), *q16.parameters())} == {torch.bfloat16}


def test_the_evaluate_stage_scores_kl_from_the_fp32_weights_under_model_dtype_bfloat16(tmp_path, tiny_model_dir, smol_tokenizer, shared_data, monkeypatch):
    """model.dtype bfloat16 (what auto is on CUDA): the stage's KL equals the fp32 KL of the saved
    weights on the very samples, and best-of-N picked by the judge's own reward is an oracle on the
    frontier at log N - (N-1)/N."""
    import alignpipe.evaluation as evaluation

    calls = []
    real = evaluation.sampled_sequence_kl

    def spy(policy, reference, prompt_ids, token_ids, **kw):
        calls.append(({p.dtype for p in (*policy.parameters(), *reference.parameters())}, prompt_ids, token_ids))
        return real(policy, reference, prompt_ids, token_ids, **kw)

    monkeypatch.setattr(evaluation, "sampled_sequence_kl", spy)
    data = DataConfig(task="imdb", dir=str(shared_data), sft_size=8, eval_size=4, prefix_tokens=(2, 4))
    config = EvaluateSlice(
        evaluate=EvaluateConfig(n_prompts=4, temperatures=[1.0], headline_temperature=1.0, baselines=["sft", "best_of_n"], best_of_n=3,
                                compute_kl=True, generation={"max_new_tokens": 4, "batch_size": 4},
                                judge=JudgeConfig(backend="reward", reward="vader")),
        data=data, pairs=PairsConfig(labeler="vader"), chat_template=False, dtype="bfloat16", seed=0,
    )  # fmt: skip
    inputs = _upstream(tmp_path, tiny_model_dir, smol_tokenizer, ["unused prompt"])
    metrics, tables, samples = _run_stage(tmp_path, inputs, config)
    [(dtypes, prompt_ids, token_ids)] = calls
    assert dtypes == {torch.float32}  # the weights as trained, not rounded to bf16
    policy, sft = (load_causal_lm(inputs[n] / "model").eval() for n in ("dpo", "sft"))
    expected = real(policy, sft, prompt_ids, token_ids, pad_id=smol_tokenizer.pad_token_id)
    frontier = {r["label"]: r for r in tables["frontier"]}
    assert frontier["dpo"]["kl"] == pytest.approx(sum(expected) / len(expected), rel=1e-5)
    # best-of-3 picked by VADER, the evaluation's own reward: an oracle, at the analytic KL bound
    bon = frontier["best-of-3"]
    assert bon["oracle"] and bon["kl_is_bound"] and bon["kl"] == pytest.approx(math.log(3) - 2 / 3)
    assert bon["mean_reward"] == next(r["mean_reward"] for r in tables["reward_kl"] if r["policy"] == "best_of_n")
    assert [r["oracle"] for r in tables["win_rates"] if r["baseline"] == "best_of_n"] == [True]
    assert frontier["dpo"]["max_new_tokens"] == 4 and 0 <= frontier["dpo"]["truncated"] <= 4
    assert metrics["frontier/best-of-3/kl"] == bon["kl"]


# --------------------------------------------------------------------------------------------
# Item 7: samples from the model itself, distinct seeds, honest labels
# --------------------------------------------------------------------------------------------


def test_sampling_ignores_the_models_own_logit_processors(tiny_model, smol_tokenizer):
    from transformers import GenerationConfig

    with torch.no_grad():  # a peaked next-token distribution, as a trained model's: min_p and top_k then bite
        tiny_model.get_output_embeddings().weight.mul_(40)
    clean = generate(tiny_model, smol_tokenizer, PROMPTS, max_new_tokens=8, temperature=1.0, seed=4)
    own = tiny_model.generation_config
    tiny_model.generation_config = GenerationConfig(**{**own.to_diff_dict(), "min_p": 0.2, "top_k": 5, "repetition_penalty": 1.5,
                                                       "no_repeat_ngram_size": 2, "do_sample": True})  # fmt: skip
    polluted = generate(tiny_model, smol_tokenizer, PROMPTS, max_new_tokens=8, temperature=1.0, seed=4)
    assert polluted.token_ids == clean.token_ids  # the policy's own distribution at T=1, not a processed one
    assert tiny_model.generation_config.min_p == 0.2 and tiny_model.generation_config.top_k == 5  # handed back as it was


def test_dpo_and_sft_samples_use_different_seeds_deterministically(tiny_model, tiny_model_dir, smol_tokenizer, tmp_path):
    """The same weights as policy and SFT: with one shared seed every continuation was identical (ties)."""
    twin = load_causal_lm(tiny_model_dir).eval()

    def samples():
        tables = evaluate_policy(
            policy=tiny_model, sft=twin, tokenizer=smol_tokenizer, prompts=[{"prompt": p, "reference": None} for p in PROMPTS],
            temperatures=[1.0], baselines=["sft"], generation=GenerationConfig(max_new_tokens=6, batch_size=5),
            judge=make_judge(JudgeConfig(backend="reward", reward="vader"), tmp_path), judged_text=lambda p, c: p + c,
            seed=0,
        )  # fmt: skip
        return [(s["policy"], s["sft"]) for s in tables.samples]

    first = samples()
    assert sum(p == s for p, s in first) == 0
    assert samples() == first


def test_the_ood_source_label_is_the_file_read(tmp_path, shared_data):
    data = DataConfig(task="imdb", dir=str(shared_data))
    config = OODSlice(ood=OODConfig(n_articles=3), data=data, chat_template=False, dtype="float32", seed=0)
    prompts, label = config.prompts()
    assert len(prompts) == 3 and str(shared_data / "cnn_dailymail.jsonl") in label
    builtin = OODSlice(ood=OODConfig(n_articles=3), data=DataConfig(task="imdb", builtin_fallback=True), chat_template=False, dtype="float32", seed=0)
    assert "built-in cnn_dailymail sample" in builtin.prompts()[1]


def test_the_report_says_what_each_number_measures(tmp_path):
    from alignpipe.report import ReportInputs, RunInfo, write_report
    from alignpipe.stages.report_stage import ood_description

    frontier = [
        {"label": "sft", "policy": "sft", "dpo_step": 0, "temperature": 1.0, "mean_reward": 0.1, "kl": 0.0, "n": 32, "truncated": 30, "max_new_tokens": 24},
        {"label": "dpo", "policy": "dpo", "dpo_step": 14, "temperature": 1.0, "mean_reward": 0.3, "kl": 1.2, "n": 32, "truncated": 31, "max_new_tokens": 24},
        {"label": "best-of-16", "policy": "best_of_n", "dpo_step": None, "temperature": 1.0, "mean_reward": 0.5, "kl": math.log(16) - 15 / 16,
         "n": 32, "oracle": True, "kl_is_bound": True, "series": "best-of-16 (oracle; KL: analytic bound)"},
    ]  # fmt: skip
    win = {"temperature": 1.0, "baseline": "best_of_n", "win_rate": 0.4, "stderr": 0.08, "n_valid": 32, "n_invalid": 0, "headline": True,
           "ci_low": 0.25, "ci_high": 0.55, "oracle": True}  # fmt: skip
    agreement = {"source": "tldr_comparisons.test.jsonl", "judge": "openai:gpt-4o", "n": 256, "n_invalid": 0, "agreement": 0.7, "ci_low": 0.64, "ci_high": 0.76}
    run = RunInfo(preset="imdb", model="gpt2-large", stages=[{"name": "sft", "key": "k" * 16, "seconds": 300.0}], total_seconds=300.0)
    ood_cfg = {"ood": {"judge": {"backend": "reward", "reward": "vader"}, "baselines": ["sft"], "article_chars": None}, "data": {"task": "imdb"}}
    description = ood_description(ood_cfg, "the first 16 CNN/DailyMail articles of /data/cnn_dailymail.jsonl")
    write_report(tmp_path, ReportInputs(run=run, win_rates=[win], frontier=frontier, judge_agreement=agreement, ood_description=description))
    report = (tmp_path / "report.md").read_text()
    assert "sum of stage compute times (stored) | 5 min 0 s" in report and "total wall time" not in report
    assert "| best-of-16 (oracle) |" in report and "(analytic bound)" in report and "*oracle* baseline" in report
    assert "best_of_n (oracle) **(headline)**" in report and "DPO vs best_of_n (oracle) at T=1" in report
    assert "max_new_tokens" in report and "| 24 | 31/32 (0.97) |" in report and "capped at the evaluation's max_new_tokens" in report
    assert "not on the DPO-vs-baseline pairs above" in report and "Win rates from this judge mean as much" not in report
    assert "human-labelled dataset pairs, not the evaluated samples" in report
    assert "/data/cnn_dailymail.jsonl" in description and "test-article" not in description


def test_the_run_summary_prints_the_measured_wall_time(capsys):
    from alignpipe.cli import render_summary

    render_summary({"executed": [], "reused": ["sft"], "stages": [{"name": "sft", "cached": True, "seconds": 0.2, "metrics": {}}],
                    "run_dir": "runs", "seconds": 21.4})  # fmt: skip
    assert "wall time: 21.4 s (this run, measured" in capsys.readouterr().out
