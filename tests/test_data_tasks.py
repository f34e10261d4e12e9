"""The task-level builders the stages call: shapes, determinism, held-out eval prompts (test split
files, or held out of one file), token-prefix IMDb prompts, the overlap check, human-labelled pairs
for the judge check, data-dir and env selection, the built-in real samples, local files with a
column map, and the shared samples."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignpipe.data import (
    SourceUnavailable,
    generation_prompts,
    human_label_pairs,
    human_pairs,
    ood_articles,
    sft_examples,
    task_split,
)
from alignpipe.data.builtin import BUILTIN_FILES, builtin_path, builtin_records
from alignpipe.data.overlap import normalize_prompt, split_overlaps
from pipeline_config.schema import DataConfig


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    """A tiny data dir: 40 reviews, 30 TL;DR posts, 30 HH pairs, 6 comparisons, 5 articles."""
    monkeypatch.delenv("ALIGNPIPE_DATA_DIR", raising=False)
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
    write_jsonl(tmp_path / "imdb.jsonl", [
        {"text": f"Review {i} " + " ".join(words[(i + k) % 10] for k in range(12)) + f".<br /><br />Paragraph two of {i}.",
         "label": i % 2}
        for i in range(40)
    ])
    write_jsonl(tmp_path / "tldr.jsonl", [
        {"prompt": f"SUBREDDIT: r/sub{i % 3}\n\nTITLE: Title {i}\n\nPOST: Post body {i}.\n\nTL;DR:", "label": f"  summary {i}"}
        for i in range(30)
    ])
    write_jsonl(tmp_path / "hh_rlhf.jsonl", [
        {"chosen": f"\n\nHuman: question {i}?\n\nAssistant: good {i}", "rejected": f"\n\nHuman: question {i}?\n\nAssistant: bad {i}"}
        for i in range(30)
    ])
    write_jsonl(tmp_path / "tldr_comparisons.jsonl", [
        {"prompt": f"TITLE: t{i}\n\nPOST: p{i}\n\nTL;DR:", "chosen": f" win {i}", "rejected": f" lose {i}"} for i in range(6)
    ])
    write_jsonl(tmp_path / "cnn_dailymail.jsonl", [
        {"id": f"id{i}", "article": f"Article {i}.", "highlights": f"Highlight {i} ."} for i in range(5)
    ])
    return tmp_path


def test_imdb_sft_and_token_prefix_prompts(data_dir, smol_tokenizer):
    cfg = DataConfig(task="imdb", dir=str(data_dir), eval_size=10, prefix_tokens=(3, 5), seed=3)
    sft = sft_examples(cfg, 25)
    assert len(sft) == 25
    assert all(ex["prompt"] == "" and "<br" not in ex["completion"] and "\nParagraph two" in ex["completion"] for ex in sft)
    train = generation_prompts(cfg, "train", 100, smol_tokenizer)
    held_out = generation_prompts(cfg, "eval", 100, smol_tokenizer)
    assert len(held_out) == 10 and len(train) > 10
    reviews = [ex["completion"] for ex in sft_examples(cfg, 100)] + [g[0]["sft_completion"] for g in task_split(cfg).eval]
    for p in train + held_out:
        # a prompt is a review's first k tokens (3 <= k <= 5), cut from the review itself
        assert p["reference"] is None and 3 <= len(smol_tokenizer(p["prompt"], add_special_tokens=False).input_ids) <= 5
        assert any(review.startswith(p["prompt"]) for review in reviews)
    assert len({len(smol_tokenizer(p["prompt"], add_special_tokens=False).input_ids) for p in train}) == 3  # every k drawn
    # SFT never trains on a held-out review: the split is by review.
    held_out_reviews = {g[0]["sft_completion"] for g in task_split(cfg).eval}
    assert len(held_out_reviews) == 10 and not held_out_reviews & {ex["completion"] for ex in sft_examples(cfg, 100)}
    with pytest.raises(ValueError, match="needs the model's tokenizer"):
        generation_prompts(cfg, "eval")


def test_a_test_split_file_supplies_the_evaluation_prompts(data_dir, smol_tokenizer):
    """<name>.test.jsonl beside <name>.jsonl: evaluation comes from it, training uses the whole main file."""
    write_jsonl(data_dir / "imdb.test.jsonl", [{"text": f"Testreview number {i} was quite something.", "label": i % 2} for i in range(12)])
    cfg = DataConfig(task="imdb", dir=str(data_dir), eval_size=8, prefix_tokens=(2, 3))
    parts = task_split(cfg)
    assert parts.eval_source == f"test split ({data_dir / 'imdb.test.jsonl'})"
    assert len(parts.train) == 40 and len(parts.eval) == 8  # no review of imdb.jsonl is held out
    assert all(p["prompt"].startswith("Testreview") for p in generation_prompts(cfg, "eval", None, smol_tokenizer))
    assert not any(p["prompt"].startswith("Testreview") for p in generation_prompts(cfg, "train", 100, smol_tokenizer))
    assert len(sft_examples(cfg, 100)) == 40
    write_jsonl(data_dir / "tldr.test.jsonl", [
        {"prompt": f"SUBREDDIT: r/t\n\nTITLE: Test {i}\n\nPOST: Test post {i}.\n\nTL;DR:", "label": f" test summary {i}"} for i in range(6)
    ])
    tldr = DataConfig(task="tldr", dir=str(data_dir), eval_size=5)
    assert [p["prompt"].startswith("SUBREDDIT: r/t\n") for p in generation_prompts(tldr, "eval")] == [True] * 5
    assert len(sft_examples(tldr, 100)) == 30
    no_test = DataConfig(task="hh", dir=str(data_dir), eval_size=6)
    assert task_split(no_test).eval_source == f"6 prompts held out of {data_dir / 'hh_rlhf.jsonl'} (no test split beside it)"


def test_on_the_hub_evaluation_prompts_come_from_the_test_split(monkeypatch):
    from alignpipe.data import adapters

    asked = []

    def hub_rows(repo_id, split, config=None, revision=None):
        asked.append((repo_id, split))
        return enumerate([{"prompt": f"SUBREDDIT: r/{split}\nTITLE: {split} {i}\nPOST: a {split} post {i}\nTL;DR:", "label": f" {split} {i}"}
                          for i in range(5)], start=1)

    monkeypatch.setattr(adapters, "hub_rows", hub_rows)
    cfg = DataConfig(task="tldr", eval_size=3)
    parts = task_split(cfg)
    assert parts.eval_source == "test split (CarperAI/openai_summarize_tldr[test])"
    assert ("CarperAI/openai_summarize_tldr", "train") in asked and ("CarperAI/openai_summarize_tldr", "test") in asked
    assert all(p["prompt"].startswith("SUBREDDIT: r/test") for p in generation_prompts(cfg, "eval"))
    assert len(sft_examples(cfg, 10)) == 5 and all(ex["prompt"].startswith("SUBREDDIT: r/train") for ex in sft_examples(cfg, 10))


def test_overlap_check_matches_after_normalization():
    evals = [{"prompt": "SUBREDDIT: r/relationships\n\nTITLE: My  cat\n\nPOST: It sleeps.\n\nTL;DR:"},
             {"prompt": "The FILM was"}, {"prompt": "Brand new prompt"}]
    training = ["TITLE: my cat\nPOST: It sleeps. TL;DR:", "the film   was", ""]
    kept, removed = split_overlaps(evals, training)
    assert [r["prompt"] for r in kept] == ["Brand new prompt"] and len(removed) == 2
    assert normalize_prompt("Ａ b\n\tc") == "a b c"  # NFKC folds the full-width letter
    assert split_overlaps(evals, ["the film"])[1] == []  # a prefix is not a match


def test_builders_are_deterministic_given_the_seed(data_dir):
    cfg = DataConfig(task="tldr", dir=str(data_dir), eval_size=5, seed=0)
    assert generation_prompts(cfg, "train", 8) == generation_prompts(cfg, "train", 8)
    assert sft_examples(cfg, 8) == sft_examples(cfg, 8)
    other = cfg.model_copy(update={"seed": 1})
    assert generation_prompts(other, "eval") != generation_prompts(cfg, "eval")


def test_tldr_prompts_sft_and_comparisons(data_dir):
    cfg = DataConfig(task="tldr", dir=str(data_dir), eval_size=5)
    sft = sft_examples(cfg, 100)
    assert len(sft) == 25  # 30 posts, 5 held out
    for ex in sft:
        assert ex["prompt"].startswith("SUBREDDIT: r/sub") and ex["prompt"].endswith("\n\nTL;DR:")
        assert ex["completion"].startswith(" summary") and not ex["completion"].startswith("  ")
    held_out = generation_prompts(cfg, "eval")
    assert len(held_out) == 5
    for p in held_out:
        number = p["prompt"].split("Title ")[1].split("\n")[0]
        assert p["reference"] == f" summary {number}"
    assert not {p["prompt"] for p in held_out} & {ex["prompt"] for ex in sft}
    pairs = human_pairs(cfg, 4)
    assert len(pairs) == 4 and all(p["chosen"].startswith(" win") and p["rejected"].startswith(" lose") for p in pairs)


def test_hh_preferred_ft_and_pairs_exclude_eval_prompts(data_dir):
    cfg = DataConfig(task="hh", dir=str(data_dir), eval_size=6)
    sft = sft_examples(cfg, 100)
    assert len(sft) == 24
    assert all(ex["prompt"].endswith("\n\nAssistant:") and ex["completion"].startswith(" good") for ex in sft)
    held_out = generation_prompts(cfg, "eval")
    assert all(p["reference"].startswith(" good") for p in held_out)
    pairs = human_pairs(cfg, 100)
    assert len(pairs) == 24
    assert not {p["prompt"] for p in pairs} & {p["prompt"] for p in held_out}
    assert all(p["chosen"].startswith(" good") and p["rejected"].startswith(" bad") for p in pairs)


def test_env_data_dir_becomes_data_dir_when_the_config_sets_none(data_dir, monkeypatch):
    """ALIGNPIPE_DATA_DIR is read once, at the edge, into data.dir: so the stages' keys cover it."""
    from pipeline_config.loading import explain_config, load_config

    monkeypatch.setenv("ALIGNPIPE_DATA_DIR", str(data_dir))
    cfg = load_config("demo", overrides=["data.task=hh", "data.eval_size=2"])
    assert cfg.data.dir == str(data_dir)
    assert [a["id"] for a in ood_articles(cfg.data.dir, 3)] == ["id0", "id1", "id2"]
    assert len(sft_examples(cfg.data, 5)) == 5
    entry = next(e for e in explain_config("demo")[1] if e.path == "data.dir")
    assert entry.value == str(data_dir) and entry.source == "env ALIGNPIPE_DATA_DIR"
    assert load_config("demo", overrides=["data.dir=/elsewhere"]).data.dir == "/elsewhere"  # the config wins


def test_builtin_fallback_when_offline(monkeypatch, tmp_path, smol_tokenizer):
    monkeypatch.delenv("ALIGNPIPE_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SourceUnavailable, match=r"stanfordnlp/imdb\[train\].*offline.*builtin_fallback"):
        sft_examples(DataConfig(task="imdb"), 5)
    cfg = DataConfig(task="imdb", builtin_fallback=True, eval_size=10)
    assert len(sft_examples(cfg, 20)) == 20
    assert len(generation_prompts(cfg, "eval", None, smol_tokenizer)) == 10
    assert task_split(cfg).eval_source == "10 reviews held out of the built-in imdb sample (alignpipe/builtin_data/imdb.jsonl) (no test split beside it)"
    assert ood_articles(None, 3, builtin_fallback=True) == builtin_records("cnn_dailymail")[:3]
    # A data dir without the file also falls back; a task with no built-in set fails clearly.
    assert len(sft_examples(cfg.model_copy(update={"dir": str(tmp_path)}), 5)) == 5
    with pytest.raises(SourceUnavailable, match="hh-rlhf"):
        sft_examples(DataConfig(task="hh", builtin_fallback=True), 5)


def test_builtin_sets_are_well_formed():
    reviews = builtin_records("imdb")
    assert len(reviews) == 300 and {r["label"] for r in reviews} == {0, 1}
    assert len({r["text"] for r in reviews}) == len(reviews)
    news = builtin_records("cnn_dailymail")
    assert len(news) == 40 and len({n["id"] for n in news}) == len(news)
    assert all(len(n["id"]) == 40 and n["highlights"].strip() for n in news)
    readme = (builtin_path("imdb").parent / "README.md").read_text()
    for needle in ("Maas et al.", "ACL 2011", "Hermann et al. 2015", "See et al. 2017", "test split", "lines 1-300", "lines 1-40"):
        assert needle in readme


def test_builtin_sets_are_verbatim_real_samples(shared_data):
    """Nothing invented ships as a dataset: each built-in file is the first lines of the real sample, byte for byte."""
    for name, n_lines in (("imdb", 300), ("cnn_dailymail", 40)):
        shipped = builtin_path(name).read_bytes()
        source = (shared_data / f"{name}.jsonl").read_bytes()
        assert BUILTIN_FILES[name] == f"{name}.jsonl"
        assert source.startswith(shipped) and shipped.count(b"\n") == n_lines


def test_local_file_with_column_map(tmp_path):
    import pandas as pd

    rows = [{"question": f"Q{i}?", "good": f"A{i}", "bad": f"no{i}"} for i in range(12)]
    path = tmp_path / "prefs.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    cfg = DataConfig(task="local", local_path=str(path), eval_size=2,
                     column_map={"prompt": "question", "chosen": "good", "rejected": "bad"})
    assert len(sft_examples(cfg, 100)) == 10
    pairs = human_pairs(cfg, 100)
    assert len(pairs) == 10 and all(p["chosen"] == "A" + p["prompt"][1:-1] for p in pairs)
    assert len(generation_prompts(cfg, "eval")) == 2
    label_pairs, where = human_label_pairs(cfg, 100)
    assert len(label_pairs) == 2 and where == f"2 prompts held out of {path} (no test split beside it)"
    with pytest.raises(ValueError, match="local_path is required"):
        sft_examples(DataConfig(task="local"), 1)
    prompts_only = tmp_path / "prompts.jsonl"
    write_jsonl(prompts_only, [{"prompt": "p1"}, {"prompt": "p2"}])
    with pytest.raises(ValueError, match="no record has both 'chosen' and 'rejected'"):
        human_pairs(DataConfig(task="local", local_path=str(prompts_only), eval_size=1), 1)
    only_train = generation_prompts(DataConfig(task="local", local_path=str(prompts_only), eval_size=1), "train")
    assert only_train in ([{"prompt": "p1", "reference": None}], [{"prompt": "p2", "reference": None}])
    with pytest.raises(ValueError, match=r"(^|/)prompts\.jsonl:[12]: field 'chosen' is missing"):
        sft_examples(DataConfig(task="local", local_path=str(prompts_only), eval_size=1), 1)


def test_human_labelled_pairs_for_the_judge_check(data_dir):
    """TL;DR: the comparisons' held-out file when present, else the comparisons; HH: the evaluation split's pairs."""
    tldr = DataConfig(task="tldr", dir=str(data_dir), eval_size=5)
    pairs, where = human_label_pairs(tldr, 100)
    assert len(pairs) == 6 and "tldr_comparisons" in where and all(p["chosen"].startswith(" win") for p in pairs)
    write_jsonl(data_dir / "tldr_comparisons.test.jsonl", [
        {"prompt": f"TITLE: v{i}\n\nPOST: q{i}\n\nTL;DR:", "chosen": f" better {i}", "rejected": f" worse {i}"} for i in range(3)
    ])
    pairs, where = human_label_pairs(tldr, 100)
    assert where == str(data_dir / "tldr_comparisons.test.jsonl") and {p["chosen"] for p in pairs} == {" better 0", " better 1", " better 2"}
    hh = DataConfig(task="hh", dir=str(data_dir), eval_size=6)
    pairs, where = human_label_pairs(hh, 100)
    held_out = {p["prompt"] for p in generation_prompts(hh, "eval")}
    assert len(pairs) == 6 and {p["prompt"] for p in pairs} == held_out and " held out of " in where
    with pytest.raises(ValueError, match="no human-labelled pairs"):
        human_label_pairs(DataConfig(task="imdb", dir=str(data_dir)), 4)


def test_imdb_has_no_human_pairs_and_bad_arguments(data_dir, smol_tokenizer):
    cfg = DataConfig(task="imdb", dir=str(data_dir))
    with pytest.raises(ValueError, match="no human preference pairs"):
        human_pairs(cfg, 1)
    with pytest.raises(ValueError, match="split must be"):
        generation_prompts(cfg, "test", 1)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        sft_examples(cfg, 0)
    with pytest.raises(ValueError, match="prefix_tokens"):
        generation_prompts(cfg.model_copy(update={"prefix_tokens": (5, 2)}), "train", 1, smol_tokenizer)


@pytest.mark.parametrize("task", ["imdb", "tldr", "hh"])
def test_shared_data_builders(shared_data, task, smol_tokenizer):
    cfg = DataConfig(task=task, dir=str(shared_data), eval_size=64, seed=0)
    sft = sft_examples(cfg, 200)
    train = generation_prompts(cfg, "train", 300, smol_tokenizer)
    held_out = generation_prompts(cfg, "eval", None, smol_tokenizer)
    assert len(sft) == 200 and len(train) == 300 and len(held_out) == 64
    assert all(ex["completion"].strip() for ex in sft)
    shared = {p["prompt"] for p in train} & {p["prompt"] for p in held_out}
    if task == "imdb":  # different reviews can open with the same 2-8 tokens: the evaluate stage removes those
        kept, removed = split_overlaps(held_out, [p["prompt"] for p in train])
        assert {r["prompt"] for r in removed} == shared and not {r["prompt"] for r in kept} & shared
    else:
        assert not shared
    if task != "imdb":
        assert all(p["reference"] and p["reference"].startswith(" ") for p in held_out)


def test_shared_data_pairs_and_articles(shared_data):
    assert len(human_pairs(DataConfig(task="tldr", dir=str(shared_data)), 1000)) == 40
    assert len(human_pairs(DataConfig(task="hh", dir=str(shared_data)), 500)) == 500
    articles = ood_articles(shared_data, 100)
    assert len(articles) == 100 and articles[0]["id"] == "f001ec5c4704938247d27a44948eebb37ae98d01"
