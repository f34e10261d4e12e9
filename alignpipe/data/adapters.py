"""One loader per dataset, each returning validated records in the layout of ../shared/data.

With a data dir every loader reads `<data_dir>/<name>.jsonl` (that layout); without one it maps the
hub dataset's rows into the same layout, so everything downstream sees one shape per dataset:

    imdb              text, label            (stanfordnlp/imdb)
    tldr              prompt, label          (CarperAI/openai_summarize_tldr; prompt in OpenAI's layout)
    tldr_comparisons  prompt, chosen, rejected   (openai/summarize_from_feedback "comparisons")
    hh_rlhf           prompt, chosen, rejected   (Anthropic/hh-rlhf, split at the last assistant turn)
    cnn_dailymail     id, article, highlights    (abisee/cnn_dailymail 3.0.0)
    ultrafeedback     prompt, chosen, rejected   (HuggingFaceH4/ultrafeedback_binarized)

In a data dir, `<name>.jsonl` is the dataset (its training data when a test file is beside it);
the dataset's held-out split (sources.EVAL_SPLITS, e.g. "test") reads `<name>.test.jsonl` instead.
On the hub `split` names the split.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

from alignpipe.data import formats
from alignpipe.data.records import FieldSpec, RecordError, read_records, read_rows, validate_rows, validated
from alignpipe.data.sources import HUB_DATASETS, data_dir_file, hub_rows, hub_source_label

log = logging.getLogger(__name__)

Row = tuple[int, dict[str, Any]]

IMDB_FIELDS = (FieldSpec("text"), FieldSpec("label", "int"))
TLDR_FIELDS = (FieldSpec("prompt"), FieldSpec("label"))
PAIR_FIELDS = (FieldSpec("prompt"), FieldSpec("chosen"), FieldSpec("rejected"))
HH_RAW_FIELDS = (FieldSpec("chosen"), FieldSpec("rejected"))
CNN_FIELDS = (FieldSpec("id"), FieldSpec("article"), FieldSpec("highlights"))
ULTRAFEEDBACK_FIELDS = (FieldSpec("prompt"), FieldSpec("chosen", "text_or_messages"), FieldSpec("rejected", "text_or_messages"))
LOCAL_FIELDS = (FieldSpec("prompt"), FieldSpec("chosen", required=False), FieldSpec("rejected", required=False))


def _rows_and_source(
    name: str, data_dir: Optional[Path], split: str, config: Optional[str] = None,
    revision: Optional[str] = None, hub_row: Optional[Callable[[dict[str, Any]], Optional[dict[str, Any]]]] = None,
) -> tuple[Iterable[Row], str]:
    """(rows, how errors name their source): the data-dir file, or the hub split mapped by `hub_row`
    (which returns None for rows that do not belong to this dataset, e.g. CNN/DM comparisons)."""
    if data_dir is not None:
        path = data_dir_file(data_dir, name, split)
        return read_rows(path), str(path)
    repo_id = HUB_DATASETS[name]
    rows = hub_rows(repo_id, split, config, revision)
    return (rows if hub_row is None else _mapped(rows, hub_row)), hub_source_label(repo_id, split)


def _mapped(rows: Iterable[Row], hub_row: Callable[[dict[str, Any]], Optional[dict[str, Any]]]) -> Iterator[Row]:
    for row_no, row in rows:
        mapped = hub_row(row)
        if mapped is not None:
            yield row_no, mapped


def imdb(data_dir: Optional[Path], split: str = "train") -> list[dict[str, Any]]:
    """IMDb reviews {text (raw, with `<br />` markup), label (1 = positive)}."""
    rows, source = _rows_and_source("imdb", data_dir, split)
    records = []
    for line_no, record in validated(rows, source, IMDB_FIELDS):
        if record["label"] not in (0, 1):
            raise RecordError(f"{source}:{line_no}: field 'label' must be 0 or 1, got {record['label']}")
        records.append(record)
    return records


def tldr(data_dir: Optional[Path], split: str = "train") -> list[dict[str, Any]]:
    """Reddit TL;DR {prompt (OpenAI layout, ends in "TL;DR:"), label (the human summary, as stored)}."""
    rows, source = _rows_and_source("tldr", data_dir, split)
    return [
        {**record, "prompt": _tldr_prompt(record["prompt"], f"{source}:{line_no}")}
        for line_no, record in validated(rows, source, TLDR_FIELDS)
    ]


def tldr_comparisons(data_dir: Optional[Path], split: str = "train") -> list[dict[str, Any]]:
    """TL;DR human comparisons {prompt, chosen, rejected}; on the hub `chosen` is summaries[choice]."""
    rows, source = _rows_and_source(
        "tldr_comparisons", data_dir, split,
        config="comparisons", revision="refs/convert/parquet", hub_row=_comparison_row,
    )
    return [
        {**record, "prompt": _tldr_prompt(record["prompt"], f"{source}:{line_no}")}
        for line_no, record in validated(rows, source, PAIR_FIELDS)
    ]


def hh_rlhf(data_dir: Optional[Path], split: str = "train", *, strict: bool = True) -> list[dict[str, Any]]:
    """Anthropic HH {prompt (dialogue through the last "\\n\\nAssistant:"), chosen, rejected (replies)}.

    A pair whose two dialogues differ before the last assistant turn, or has an empty reply, is not a
    valid DPO pair. strict: fail on the first one; otherwise drop them and log how many (the public
    data has a few: 9 of the 2,312 harmless-base test pairs).
    """
    rows, source = _rows_and_source("hh_rlhf", data_dir, split)
    pairs, dropped = [], []
    for line_no, record in validated(rows, source, HH_RAW_FIELDS):
        try:
            prompt, chosen, rejected = formats.split_hh_pair(record["chosen"], record["rejected"])
        except ValueError as e:
            if strict:
                raise RecordError(f"{source}:{line_no}: {e}") from None
            dropped.append(f"{source}:{line_no}: {e}")
            continue
        pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    if dropped:
        log.warning("%s: dropped %d of %d pairs that are not valid DPO pairs (first: %s)",
                    source, len(dropped), len(dropped) + len(pairs), dropped[0])
    return pairs


def cnn_dailymail(data_dir: Optional[Path], split: str = "test") -> list[dict[str, Any]]:
    """CNN/DailyMail 3.0.0 {id, article, highlights}, in source order."""
    rows, source = _rows_and_source("cnn_dailymail", data_dir, split, config="3.0.0")
    return validate_rows(rows, source, CNN_FIELDS)


def ultrafeedback(data_dir: Optional[Path], split: str = "train_prefs") -> list[dict[str, Any]]:
    """UltraFeedback binarized {prompt, chosen, rejected}: replies are the final assistant messages.

    A data-dir file may hold either message lists (the hub layout) or plain reply strings.
    """
    rows, source = _rows_and_source("ultrafeedback", data_dir, split)
    pairs = []
    for line_no, record in validated(rows, source, ULTRAFEEDBACK_FIELDS):
        pair = {"prompt": record["prompt"]}
        for name in ("chosen", "rejected"):
            value = record[name]
            if isinstance(value, list):
                try:
                    value = formats.final_assistant_content(value)
                except ValueError as e:
                    raise RecordError(f"{source}:{line_no}: field '{name}' {e}") from None
                if not value.strip():
                    raise RecordError(f"{source}:{line_no}: field '{name}' has an empty assistant message")
            pair[name] = value
        pairs.append(pair)
    return pairs


def local_file(path: str | Path, column_map: Optional[Mapping[str, str]] = None) -> list[dict[str, Any]]:
    """Any JSONL/Parquet/CSV file {prompt, chosen?, rejected?}; `column_map` maps our field -> file column.

    `chosen` is the preferred (or reference / SFT target) response; `rejected` is needed only for pairs.
    """
    return read_records(Path(path), LOCAL_FIELDS, column_map)


# Hub rows of openai/summarize_from_feedback: info{post,title,subreddit,...}, summaries[{text}], choice.
def _comparison_row(row: dict[str, Any]) -> Optional[dict[str, Any]]:
    info = row.get("info") or {}
    if not info.get("post"):  # the CNN/DM comparisons (info.article) are not TL;DR data
        return None
    summaries, choice = row.get("summaries") or [], row.get("choice")
    if len(summaries) != 2 or choice not in (0, 1):
        return {"prompt": info.get("post"), "chosen": None, "rejected": None}
    return {
        "prompt": formats.tldr_prompt(info.get("title") or "", info["post"], info.get("subreddit")),
        "chosen": summaries[choice].get("text"),
        "rejected": summaries[1 - choice].get("text"),
    }


def _tldr_prompt(prompt: str, where: str) -> str:
    try:
        return formats.normalize_tldr_prompt(prompt)
    except ValueError as e:
        raise RecordError(f"{where}: field 'prompt' {e}") from None
