"""Which config fields code actually reads: the witness behind "no setting is silently ignored".

Every config model's attribute lookup goes through `traced_getattribute`. Normally that is one
global check; inside `recording()` each read of a declared field is noted as (class, field), so a
test can run the pipeline and then demand that every field of the schema was read by something.
Pydantic's own dumps and validation read the instance dict directly, so they do not count.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

_reads: Optional[set[tuple[str, str]]] = None


def traced_getattribute(self, name: str):
    if _reads is not None and not name.startswith("_"):
        fields = type(self).__pydantic_fields__ if hasattr(type(self), "__pydantic_fields__") else {}
        if name in fields:
            _reads.add((type(self).__name__, name))
    return object.__getattribute__(self, name)


@contextmanager
def not_counted() -> Iterator[None]:
    """For code that walks every field generically (building a slice, hashing inputs, printing the
    config): what it touches is not evidence that a setting does anything."""
    global _reads
    outer, _reads = _reads, None
    try:
        yield
    finally:
        _reads = outer


@contextmanager
def recording() -> Iterator[set[tuple[str, str]]]:
    """Collect (model class name, field name) for every field read while the block runs."""
    global _reads
    outer, _reads = _reads, set() if _reads is None else _reads
    try:
        yield _reads
    finally:
        _reads = outer
