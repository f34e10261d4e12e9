"""Where a dataset's rows come from: `<data_dir>/<name>.jsonl` when a data dir is set, else the hub.

The hub is tried only without a data dir, and never when HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is
set: then it counts as unavailable, so the caller can fall back to the built-in set or fail clearly.
The data dir comes from the config only (ALIGNPIPE_DATA_DIR is folded into data.dir when the config
is loaded), so a stage's cache key covers it.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator, Optional

from tqdm.auto import tqdm

log = logging.getLogger(__name__)

DATASET_NAMES = ("imdb", "tldr", "tldr_comparisons", "hh_rlhf", "cnn_dailymail", "ultrafeedback")
HUB_DATASETS = {
    "imdb": "stanfordnlp/imdb",
    "tldr": "CarperAI/openai_summarize_tldr",
    "tldr_comparisons": "openai/summarize_from_feedback",
    "hh_rlhf": "Anthropic/hh-rlhf",
    "cnn_dailymail": "abisee/cnn_dailymail",
    "ultrafeedback": "HuggingFaceH4/ultrafeedback_binarized",
}
# The held-out split each dataset offers, if any: on the hub that split, in a data dir the optional
# file `<name>.test.jsonl` beside `<name>.jsonl` (whatever the hub calls the split). Evaluation
# prompts come from it when it is there; otherwise they are held out from the one file.
# cnn_dailymail is absent: its data-dir file already is the (test) set the OOD stage reads.
EVAL_SPLITS = {"imdb": "test", "tldr": "test", "tldr_comparisons": "validation", "hh_rlhf": "test",
               "ultrafeedback": "test_prefs"}
TEST_FILE_SUFFIX = ".test.jsonl"

# What each task may read: its own data, TL;DR's comparisons, and CNN/DailyMail for the OOD test.
_TASK_DATASETS = {
    "imdb": ("imdb",),
    "tldr": ("tldr", "tldr_comparisons"),
    "hh": ("hh_rlhf",),
    "ultrafeedback": ("ultrafeedback",),
    "local": (),
}


def task_datasets(task: str) -> tuple[str, ...]:
    return (*_TASK_DATASETS[task], "cnn_dailymail")


class SourceUnavailable(RuntimeError):
    """Neither the data dir nor the hub could provide a dataset (the message says why)."""


def resolve_data_dir(data_dir: Optional[str | Path]) -> Optional[Path]:
    """The data dir to read from (DataConfig.dir), or None for the hub."""
    if data_dir in (None, ""):
        return None
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise SourceUnavailable(f"data.dir: '{path}' is not a directory")
    return path


def data_dir_file(data_dir: Path, name: str, split: Optional[str] = None) -> Path:
    """`<data_dir>/<name>.jsonl`, or `<name>.test.jsonl` for the dataset's held-out split
    (EVAL_SPLITS); SourceUnavailable when the data dir lacks it."""
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset '{name}' (known: {', '.join(DATASET_NAMES)})")
    file = f"{name}{TEST_FILE_SUFFIX}" if split is not None and split == EVAL_SPLITS.get(name) else f"{name}.jsonl"
    path = data_dir / file
    if not path.exists():
        raise SourceUnavailable(f"{path}: not found in data dir (expected {file})")
    return path


def hub_offline() -> bool:
    from alignpipe.hub import check_hub

    return not check_hub()


def hub_rows(repo_id: str, split: str, config: Optional[str] = None, revision: Optional[str] = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows (1-based row number, row) of a hub dataset split; SourceUnavailable when it cannot be loaded."""
    label = f"{repo_id}{'/' + config if config else ''}[{split}]"
    if hub_offline():
        raise SourceUnavailable(f"{label}: the hub is offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set)")
    import datasets

    try:
        dataset = datasets.load_dataset(repo_id, config, split=split, revision=revision)
    except Exception as e:  # connection, auth, missing repo: all mean "not available from here"
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SourceUnavailable(f"{label}: cannot load from the hub ({first_line})") from e
    log.info("loaded %s from the hub: %d rows", label, len(dataset))
    return tqdm(enumerate(dataset, start=1), total=len(dataset), desc=f"reading {label}", unit="row", mininterval=2.0)


def hub_source_label(repo_id: str, split: str) -> str:
    """How errors name a hub row's origin: `<repo>[<split>]:<row>`."""
    return f"{repo_id}[{split}]"
