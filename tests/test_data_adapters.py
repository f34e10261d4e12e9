"""Each dataset adapter: data-dir files in the ../shared/data layout, hub rows mapped into the same
layout (with `datasets.load_dataset` faked: no test touches the network), and the real samples."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignpipe.data import adapters
from alignpipe.data.records import RecordError
from alignpipe.data.sources import SourceUnavailable, data_dir_file, hub_rows, resolve_data_dir

HH_PROMPT = "\n\nHuman: How do I boil an egg?\n\nAssistant:"


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_data_dir_adapters_read_the_shared_layout(tmp_path):
    write_jsonl(tmp_path / "imdb.jsonl", [{"text": "Fine.<br /><br />Really.", "label": 1}, {"text": "Bad.", "label": 0}])
    write_jsonl(tmp_path / "tldr.jsonl", [{"prompt": "SUBREDDIT: r/a\nTITLE: t\nPOST: p\nTL;DR:", "label": "  s"}])
    write_jsonl(tmp_path / "tldr_comparisons.jsonl", [{"prompt": "TITLE: t\n\nPOST: p\n\nTL;DR:", "chosen": " a", "rejected": " b", "title": "t"}])
    write_jsonl(tmp_path / "hh_rlhf.jsonl", [{"chosen": HH_PROMPT + " Simmer it.", "rejected": HH_PROMPT + " Microwave it."}])
    write_jsonl(tmp_path / "cnn_dailymail.jsonl", [{"id": "abc", "article": "Text.", "highlights": "Hi ."}])
    write_jsonl(tmp_path / "ultrafeedback.jsonl", [
        {"prompt": "q", "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "good"}],
         "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "bad"}]},
        {"prompt": "q2", "chosen": "plain good", "rejected": "plain bad"},
    ])
    assert adapters.imdb(tmp_path) == [{"text": "Fine.<br /><br />Really.", "label": 1}, {"text": "Bad.", "label": 0}]
    assert adapters.tldr(tmp_path) == [{"prompt": "SUBREDDIT: r/a\n\nTITLE: t\n\nPOST: p\n\nTL;DR:", "label": "  s"}]
    assert adapters.tldr_comparisons(tmp_path) == [{"prompt": "TITLE: t\n\nPOST: p\n\nTL;DR:", "chosen": " a", "rejected": " b"}]
    assert adapters.hh_rlhf(tmp_path) == [{"prompt": HH_PROMPT, "chosen": " Simmer it.", "rejected": " Microwave it."}]
    assert adapters.cnn_dailymail(tmp_path) == [{"id": "abc", "article": "Text.", "highlights": "Hi ."}]
    assert adapters.ultrafeedback(tmp_path) == [
        {"prompt": "q", "chosen": "good", "rejected": "bad"},
        {"prompt": "q2", "chosen": "plain good", "rejected": "plain bad"},
    ]


def test_adapter_errors_name_file_line_and_field(tmp_path):
    write_jsonl(tmp_path / "imdb.jsonl", [{"text": "ok", "label": 1}, {"text": "ok", "label": 2}])
    with pytest.raises(RecordError, match=r"(^|/)imdb\.jsonl:2: field 'label' must be 0 or 1, got 2$"):
        adapters.imdb(tmp_path)
    write_jsonl(tmp_path / "tldr.jsonl", [{"prompt": "POST: no summary cue", "label": "s"}])
    with pytest.raises(RecordError, match=r"(^|/)tldr\.jsonl:1: field 'prompt' does not end in 'TL;DR:'$"):
        adapters.tldr(tmp_path)
    write_jsonl(tmp_path / "ultrafeedback.jsonl", [{"prompt": "q", "chosen": [{"role": "user", "content": "q"}], "rejected": "r"}])
    with pytest.raises(RecordError, match=r"(^|/)ultrafeedback\.jsonl:1: field 'chosen' has no assistant message$"):
        adapters.ultrafeedback(tmp_path)


def test_hh_mismatched_prompts_fail_strict_and_are_dropped_otherwise(tmp_path, caplog):
    good = {"chosen": HH_PROMPT + " Simmer it.", "rejected": HH_PROMPT + " Microwave it."}
    bad = {"chosen": HH_PROMPT + " A.", "rejected": "\n\nHuman: Something else?\n\nAssistant: B."}
    write_jsonl(tmp_path / "hh_rlhf.jsonl", [good, bad, good])
    with pytest.raises(RecordError, match=r"(^|/)hh_rlhf\.jsonl:2: fields 'chosen' and 'rejected' have different prompts"):
        adapters.hh_rlhf(tmp_path)
    assert len(adapters.hh_rlhf(tmp_path, strict=False)) == 2
    assert "dropped 1 of 3 pairs" in caplog.text


def test_data_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNPIPE_DATA_DIR", str(tmp_path))
    assert resolve_data_dir(None) is None  # the environment is read once, when the config is loaded
    assert resolve_data_dir(tmp_path) == tmp_path
    with pytest.raises(SourceUnavailable, match="not a directory"):
        resolve_data_dir(tmp_path / "missing")
    with pytest.raises(SourceUnavailable, match=r"imdb\.jsonl: not found in data dir"):
        data_dir_file(tmp_path, "imdb")


def test_the_held_out_split_reads_the_test_file_of_a_data_dir(tmp_path):
    write_jsonl(tmp_path / "hh_rlhf.jsonl", [{"chosen": HH_PROMPT + " Train a.", "rejected": HH_PROMPT + " Train b."}])
    with pytest.raises(SourceUnavailable, match=r"hh_rlhf\.test\.jsonl: not found in data dir \(expected hh_rlhf\.test\.jsonl\)"):
        adapters.hh_rlhf(tmp_path, "test")
    write_jsonl(tmp_path / "hh_rlhf.test.jsonl", [{"chosen": HH_PROMPT + " Test a.", "rejected": HH_PROMPT + " Test b."}])
    assert adapters.hh_rlhf(tmp_path, "test")[0]["chosen"] == " Test a."
    assert adapters.hh_rlhf(tmp_path, "train")[0]["chosen"] == " Train a."
    for name in ("tldr_comparisons.jsonl", "tldr_comparisons.test.jsonl", "cnn_dailymail.jsonl"):
        (tmp_path / name).write_text("")
    assert data_dir_file(tmp_path, "tldr_comparisons", "validation").name == "tldr_comparisons.test.jsonl"
    assert data_dir_file(tmp_path, "tldr_comparisons", "train").name == "tldr_comparisons.jsonl"
    assert data_dir_file(tmp_path, "cnn_dailymail", "test").name == "cnn_dailymail.jsonl"  # its one file is the test set


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_offline_env_means_hub_unavailable_without_trying(monkeypatch, variable):
    import datasets

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv(variable, "1")
    monkeypatch.setattr("alignpipe.hub._probe", lambda *args, **kwargs: pytest.fail("the hub was probed"))
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("the hub was tried"))
    with pytest.raises(SourceUnavailable, match="offline"):
        hub_rows("stanfordnlp/imdb", "train")


@pytest.fixture
def fake_hub(monkeypatch):
    """Serve hub datasets from in-memory rows; records every load_dataset call."""
    import datasets

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr("alignpipe.hub._probe", lambda *args, **kwargs: True)  # no real probe
    tables: dict[str, list[dict]] = {}
    calls: list[tuple] = []

    def load_dataset(path, name=None, split=None, revision=None, **kwargs):
        calls.append((path, name, split, revision))
        if path not in tables:
            raise ConnectionError(f"Couldn't reach '{path}' on the Hub (LocalEntryNotFoundError)")
        return datasets.Dataset.from_list(tables[path])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return tables, calls


def test_hub_rows_are_mapped_into_the_shared_layout(fake_hub):
    tables, calls = fake_hub
    tables["openai/summarize_from_feedback"] = [
        {"info": {"post": "My cat sleeps.", "title": "Cat", "subreddit": "pets", "article": None},
         "summaries": [{"text": " cat sleeps"}, {"text": " a cat"}], "choice": 1},
        {"info": {"post": None, "title": "News", "subreddit": None, "article": "A CNN article."},
         "summaries": [{"text": " x"}, {"text": " y"}], "choice": 0},
    ]
    tables["HuggingFaceH4/ultrafeedback_binarized"] = [
        {"prompt": "q", "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "good"}],
         "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "bad"}], "score_chosen": 8.0},
    ]
    tables["Anthropic/hh-rlhf"] = [{"chosen": HH_PROMPT + " a", "rejected": HH_PROMPT + " b"}]
    assert adapters.tldr_comparisons(None) == [
        {"prompt": "SUBREDDIT: r/pets\n\nTITLE: Cat\n\nPOST: My cat sleeps.\n\nTL;DR:", "chosen": " a cat", "rejected": " cat sleeps"}
    ]
    assert adapters.ultrafeedback(None) == [{"prompt": "q", "chosen": "good", "rejected": "bad"}]
    assert adapters.hh_rlhf(None, "test") == [{"prompt": HH_PROMPT, "chosen": " a", "rejected": " b"}]
    assert calls == [
        ("openai/summarize_from_feedback", "comparisons", "train", "refs/convert/parquet"),
        ("HuggingFaceH4/ultrafeedback_binarized", None, "train_prefs", None),
        ("Anthropic/hh-rlhf", None, "test", None),
    ]


def test_hub_errors_name_dataset_split_and_row(fake_hub):
    tables, _ = fake_hub
    tables["abisee/cnn_dailymail"] = [{"id": "1", "article": "A.", "highlights": "a"}, {"id": "2", "article": "", "highlights": "b"}]
    with pytest.raises(RecordError, match=r"^abisee/cnn_dailymail\[test\]:2: field 'article' is empty$"):
        adapters.cnn_dailymail(None)
    with pytest.raises(SourceUnavailable, match=r"stanfordnlp/imdb\[train\]: cannot load from the hub \(Couldn't reach"):
        adapters.imdb(None)


# --- the real samples in ../shared/data ------------------------------------------------------------

def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def test_shared_imdb_tldr_cnn(shared_data):
    raw_imdb = _lines(shared_data / "imdb.jsonl")
    imdb = adapters.imdb(shared_data)
    assert len(imdb) == len(raw_imdb) > 0
    assert sum(r["label"] for r in imdb) == sum(r["label"] for r in raw_imdb)
    assert {r["label"] for r in imdb} == {0, 1}

    tldr = adapters.tldr(shared_data)
    assert len(tldr) == len(_lines(shared_data / "tldr.jsonl"))
    assert all(r["prompt"].startswith("SUBREDDIT: r/") and r["prompt"].endswith("\n\nTL;DR:") for r in tldr)

    comparisons = adapters.tldr_comparisons(shared_data)
    assert len(comparisons) == len(_lines(shared_data / "tldr_comparisons.jsonl"))
    assert all(set(r) == {"prompt", "chosen", "rejected"} and r["chosen"] != r["rejected"] for r in comparisons)

    cnn = adapters.cnn_dailymail(shared_data)
    assert [r["id"] for r in cnn] == [r["id"] for r in _lines(shared_data / "cnn_dailymail.jsonl")]
    assert all(r["article"] and r["highlights"] for r in cnn)


def test_shared_hh_rlhf(shared_data):
    raw = _lines(shared_data / "hh_rlhf.jsonl")
    # The public harmless-base test file has a few pairs that are not DPO pairs: strict mode names the first.
    with pytest.raises(RecordError, match=r"(^|/)hh_rlhf\.jsonl:\d+: field"):
        adapters.hh_rlhf(shared_data)
    pairs = adapters.hh_rlhf(shared_data, strict=False)
    assert 0.99 * len(raw) < len(pairs) < len(raw)
    for pair in pairs:
        assert pair["prompt"].endswith("\n\nAssistant:") and pair["prompt"].startswith("\n\nHuman:")
        assert "\n\nAssistant:" not in pair["chosen"] and pair["chosen"].strip() and pair["rejected"].strip()


def test_shared_ultrafeedback_is_absent(shared_data):
    if (shared_data / "ultrafeedback.jsonl").exists():
        assert adapters.ultrafeedback(shared_data)
    else:
        with pytest.raises(SourceUnavailable, match=r"ultrafeedback\.jsonl: not found"):
            adapters.ultrafeedback(shared_data)
