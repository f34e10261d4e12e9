"""Reading JSONL / CSV / Parquet records, column mapping, and one-line errors for malformed records."""
from __future__ import annotations

import json

import pytest

from alignpipe.data.formats import (
    clean_imdb_markup,
    final_assistant_content,
    normalize_tldr_prompt,
    split_hh_pair,
    tldr_prompt,
    tldr_summary,
    word_prefix,
)
from alignpipe.data.records import FieldSpec, RecordError, read_records

FIELDS = (FieldSpec("prompt"), FieldSpec("score", "int"), FieldSpec("note", required=False))
ROWS = [{"q": "first prompt", "s": 1, "n": "x"}, {"q": "second\nprompt, with comma", "s": 0, "n": None}]
MAP = {"prompt": "q", "score": "s", "note": "n"}
EXPECTED = [{"prompt": "first prompt", "score": 1, "note": "x"}, {"prompt": "second\nprompt, with comma", "score": 0, "note": None}]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_jsonl_csv_and_parquet_read_the_same_records(tmp_path):
    import pandas as pd

    jsonl = write_jsonl(tmp_path / "t.jsonl", ROWS)
    frame = pd.DataFrame(ROWS)
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_parquet(tmp_path / "t.parquet", index=False)
    for path in (jsonl, tmp_path / "t.csv", tmp_path / "t.parquet"):
        assert read_records(path, FIELDS, MAP) == EXPECTED, path.suffix


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"prompt": "ok", "score": 1}, None),
        ({"score": 1}, "bad.jsonl:3: field 'prompt' is missing"),
        ({"prompt": "  \n", "score": 1}, "bad.jsonl:3: field 'prompt' is empty"),
        ({"prompt": 5, "score": 1}, "bad.jsonl:3: field 'prompt' must be a string, got int"),
        ({"prompt": "ok", "score": "high"}, "bad.jsonl:3: field 'score' must be an integer, got str"),
        ({"prompt": "ok", "score": True}, "bad.jsonl:3: field 'score' must be an integer, got bool"),
    ],
)
def test_malformed_record_names_file_line_and_field(tmp_path, line, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "score": 1}, {"prompt": "b", "score": 0}, line])
    if message is None:
        assert len(read_records(path, FIELDS)) == 3
        return
    with pytest.raises(RecordError) as err:
        read_records(path, FIELDS)
    assert str(err.value) == f"{tmp_path}/{message}"


def test_mapped_column_is_named_in_the_error(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"question": "hi", "s": 1}])
    with pytest.raises(RecordError, match=r"(^|/)m\.jsonl:1: field 'score' \(column 'rating'\) is missing$"):
        read_records(path, FIELDS, {"prompt": "question", "score": "rating"})


def test_invalid_json_and_blank_lines(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_text('{"prompt": "a", "score": 1}\n\n{"prompt": "b", score: 2}\n', encoding="utf-8")
    with pytest.raises(RecordError, match=r"(^|/)j\.jsonl:3: invalid JSON"):
        read_records(path, FIELDS)


def test_csv_errors_point_at_the_physical_line(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text('prompt,score\n"multi\nline",1\nok,2\n,3\n', encoding="utf-8")
    with pytest.raises(RecordError, match=r"(^|/)c\.csv:5: field 'prompt' is empty$"):
        read_records(path, FIELDS)


def test_unknown_mapping_field_unsupported_type_and_missing_file(tmp_path):
    path = write_jsonl(tmp_path / "ok.jsonl", [{"prompt": "a", "score": 1}])
    with pytest.raises(RecordError, match="unknown fields"):
        read_records(path, FIELDS, {"answer": "a"})
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(RecordError, match="unsupported file type '.txt'"):
        read_records(tmp_path / "x.txt", FIELDS)
    with pytest.raises(RecordError, match="file not found"):
        read_records(tmp_path / "nope.jsonl", FIELDS)


def test_hh_pair_splits_at_the_last_assistant_turn():
    prompt = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: tell me a joke\n\nAssistant:"
    got = split_hh_pair(prompt + " Why did the chicken cross the road?", prompt + " No.")
    assert got == (prompt, " Why did the chicken cross the road?", " No.")


@pytest.mark.parametrize(
    ("chosen", "rejected", "message"),
    [
        ("\n\nHuman: a\n\nAssistant: x", "\n\nHuman: b\n\nAssistant: y", "different prompts"),
        ("\n\nHuman: a\n\nAssistant: ", "\n\nHuman: a\n\nAssistant: y", "field 'chosen' has an empty"),
        ("\n\nHuman: a", "\n\nHuman: a\n\nAssistant: y", "field 'chosen' has no"),
    ],
)
def test_hh_pair_rejects_pairs_that_are_not_dpo_pairs(chosen, rejected, message):
    with pytest.raises(ValueError, match=message):
        split_hh_pair(chosen, rejected)


def test_tldr_prompt_layouts():
    carper = "SUBREDDIT: r/pets\nTITLE: My cat\nPOST: She sleeps all day.\nIs that ok?\nTL;DR: "
    openai = "SUBREDDIT: r/pets\n\nTITLE: My cat\n\nPOST: She sleeps all day.\nIs that ok?\n\nTL;DR:"
    assert normalize_tldr_prompt(carper) == openai
    assert normalize_tldr_prompt(openai) == openai
    assert tldr_prompt("My cat", "She sleeps all day.\nIs that ok?", "pets") == openai
    no_subreddit = "TITLE: t\n\nPOST: p\n\nTL;DR:"
    assert normalize_tldr_prompt(no_subreddit) == no_subreddit
    with pytest.raises(ValueError, match="TL;DR"):
        normalize_tldr_prompt("TITLE: t\n\nPOST: p")
    assert tldr_summary("  two leading spaces") == " two leading spaces"


def test_imdb_cleaning_and_word_prefix():
    assert clean_imdb_markup("Great.<br /><br />Really great. <br/>The end.") == "Great.\nReally great.\nThe end."
    assert word_prefix("One  two\nthree four", 3) == "One  two\nthree"
    assert word_prefix("short", 5) == "short"


def test_final_assistant_content():
    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]
    assert final_assistant_content(chat) == "a2"
    with pytest.raises(ValueError, match="no assistant"):
        final_assistant_content(chat[:1])
