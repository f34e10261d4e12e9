"""The small built-in sets shipped in `alignpipe/builtin_data/`, for demos with neither data dir nor hub.

Real samples, copied verbatim from the project's ../shared/data (alignpipe/builtin_data/README.md
gives source, selection and citation): 300 IMDb reviews and 40 CNN/DailyMail articles with their
highlights, both from their datasets' test splits. Enough to run every stage on a laptop and to
measure a large effect; too few for a precise one.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from alignpipe.data.adapters import CNN_FIELDS, IMDB_FIELDS
from alignpipe.data.records import read_records

BUILTIN_FILES = {"imdb": "imdb.jsonl", "cnn_dailymail": "cnn_dailymail.jsonl"}
_FIELDS = {"imdb": IMDB_FIELDS, "cnn_dailymail": CNN_FIELDS}


def builtin_path(name: str) -> Path:
    if name not in BUILTIN_FILES:
        raise KeyError(f"no built-in data for '{name}' (built-in: {', '.join(BUILTIN_FILES)})")
    return Path(str(resources.files("alignpipe") / "builtin_data" / BUILTIN_FILES[name]))


def builtin_records(name: str) -> list[dict[str, Any]]:
    """The built-in records for `name` ("imdb" or "cnn_dailymail"), validated like any other file."""
    return read_records(builtin_path(name), _FIELDS[name])
