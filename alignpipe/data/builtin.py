"""The small built-in sets shipped in `alignpipe/builtin_data/`, for demos with neither data dir nor hub.

They were written for this project (not copied from any dataset): about 80 short movie reviews in
the IMDb layout (text, label) and about 40 invented news-article openings in the CNN/DailyMail layout
(id, article, highlights). Enough to exercise every stage on a laptop, far too few to measure anything.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from alignpipe.data.adapters import CNN_FIELDS, IMDB_FIELDS
from alignpipe.data.records import read_records

BUILTIN_FILES = {"imdb": "movie_reviews.jsonl", "cnn_dailymail": "news_openings.jsonl"}
_FIELDS = {"imdb": IMDB_FIELDS, "cnn_dailymail": CNN_FIELDS}


def builtin_path(name: str) -> Path:
    if name not in BUILTIN_FILES:
        raise KeyError(f"no built-in data for '{name}' (built-in: {', '.join(BUILTIN_FILES)})")
    return Path(str(resources.files("alignpipe") / "builtin_data" / BUILTIN_FILES[name]))


def builtin_records(name: str) -> list[dict[str, Any]]:
    """The built-in records for `name` ("imdb" or "cnn_dailymail"), validated like any other file."""
    return read_records(builtin_path(name), _FIELDS[name])
