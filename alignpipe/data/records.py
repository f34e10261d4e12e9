"""Reading tabular records (JSONL, Parquet, CSV, or rows from a hub dataset) and validating them.

Every record is checked field by field as it is read, so a bad file fails at once with one line
that names the source, the line (or row) number and the field, e.g. `imdb.jsonl:17: field 'text' is empty`.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Mapping, Optional

Kind = Literal["text", "int", "messages", "text_or_messages"]
SUPPORTED_SUFFIXES = (".jsonl", ".parquet", ".csv")


class RecordError(ValueError):
    """A malformed record or file: the message is one line, `<source>:<line>: <what is wrong>`."""


@dataclass(frozen=True)
class FieldSpec:
    """One field we need: `text` is a non-empty string, `int` an integer (CSV digits accepted),
    `messages` a list of {role, content} dicts, `text_or_messages` either."""

    name: str
    kind: Kind = "text"
    required: bool = True


def read_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, raw row) from a JSONL, Parquet or CSV file; line numbers are 1-based."""
    path = Path(path)
    if not path.exists():
        raise RecordError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _jsonl_rows(path)
    elif suffix == ".csv":
        yield from _csv_rows(path)
    elif suffix == ".parquet":
        yield from _parquet_rows(path)
    else:
        raise RecordError(f"{path}: unsupported file type '{suffix}' (use one of {', '.join(SUPPORTED_SUFFIXES)})")


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise RecordError(f"{path}:{line_no}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise RecordError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
            yield line_no, row


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    # Line numbers are physical lines (header = line 1), so quoted multi-line cells still point right.
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:  # reading the header; an empty file has no rows
            return
        start = reader.line_num + 1
        for row in reader:
            yield start, dict(row)
            start = reader.line_num + 1


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise RecordError(f"{path}: cannot read parquet ({e})") from None
    for row_no, row in enumerate(table.to_pylist(), start=1):
        yield row_no, row


def check_field(value: Any, spec: FieldSpec, where: str) -> Any:
    """The validated (and for CSV ints, converted) value of one field; raises RecordError otherwise."""
    if spec.kind == "text":
        if not isinstance(value, str):
            raise RecordError(f"{where}: field '{spec.name}' must be a string, got {type(value).__name__}")
        if not value.strip():
            raise RecordError(f"{where}: field '{spec.name}' is empty")
        return value
    if spec.kind == "int":
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecordError(f"{where}: field '{spec.name}' must be an integer, got {type(value).__name__}")
        return value
    if spec.kind == "messages" or (spec.kind == "text_or_messages" and not isinstance(value, str)):
        return _check_messages(value, spec.name, where)
    return check_field(value, FieldSpec(spec.name, "text"), where)


def _check_messages(value: Any, name: str, where: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise RecordError(f"{where}: field '{name}' must be a non-empty list of messages")
    for i, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or not isinstance(
            message.get("content"), str
        ):
            raise RecordError(f"{where}: field '{name}' message {i} must have string 'role' and 'content'")
    return value


def validated(
    rows: Iterable[tuple[int, Mapping[str, Any]]],
    source: str,
    fields: Iterable[FieldSpec],
    column_map: Optional[Mapping[str, str]] = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record holding exactly `fields`), each read from the column `column_map` names."""
    fields = list(fields)
    column_map = dict(column_map or {})
    unknown = set(column_map) - {f.name for f in fields}
    if unknown:
        raise RecordError(f"{source}: column_map names unknown fields {sorted(unknown)} (known: {[f.name for f in fields]})")
    n = 0
    for line_no, row in rows:
        n += 1
        where = f"{source}:{line_no}"
        record: dict[str, Any] = {}
        for spec in fields:
            column = column_map.get(spec.name, spec.name)
            value = row.get(column)
            if not spec.required and isinstance(value, str) and not value.strip():
                value = None  # an optional field left blank (CSV cannot say null)
            if value is None or (isinstance(value, float) and value != value):  # missing, null or NaN
                if spec.required:
                    shown = f"'{spec.name}'" if column == spec.name else f"'{spec.name}' (column '{column}')"
                    raise RecordError(f"{where}: field {shown} is missing")
                record[spec.name] = None
                continue
            record[spec.name] = check_field(value, spec, where)
        yield line_no, record
    if n == 0:
        raise RecordError(f"{source}: no records (the file is empty)")


def validate_rows(
    rows: Iterable[tuple[int, Mapping[str, Any]]],
    source: str,
    fields: Iterable[FieldSpec],
    column_map: Optional[Mapping[str, str]] = None,
) -> list[dict[str, Any]]:
    """All records of `rows`, validated (see `validated`)."""
    return [record for _, record in validated(rows, source, fields, column_map)]


def read_records(
    path: Path, fields: Iterable[FieldSpec], column_map: Optional[Mapping[str, str]] = None
) -> list[dict[str, Any]]:
    """All records of a JSONL/Parquet/CSV file, validated; errors name the file by its path."""
    path = Path(path)
    return validate_rows(read_rows(path), str(path), fields, column_map)
