"""The verdict cache: an append-only JSONL file, one durable line per finished judgment.

Each line is written with a single O_APPEND write and fsync'd before the judge moves on, so a
crash loses at most the line being written; that torn line is skipped (and terminated) on the
next load. Keys hash everything that decides the answer, so a rerun or a resumed run never
pays for the same judgment twice, while a changed prompt, model or order is asked afresh.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)

CACHE_FILE = "verdicts.jsonl"


def cache_key(backend: str, model: str, template: str, prompt: str, first: str, second: str, order: str) -> str:
    payload = json.dumps([backend, model, template, prompt, first, second, order], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class VerdictCache:
    def __init__(self, cache_dir: Path) -> None:
        self.path = Path(cache_dir) / CACHE_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._records: dict[str, dict[str, Any]] = {}
        self.n_torn = 0
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        for line in data.split(b"\n"):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                self._records[record["key"]] = record
            except (ValueError, KeyError, TypeError):
                self.n_torn += 1
        if self.n_torn:
            log.warning("%s: skipped %d unreadable line(s) (an interrupted write); they will be re-judged", self.path, self.n_torn)
        if data and not data.endswith(b"\n"):
            # Terminate a torn last line so the next record starts on a line of its own.
            self._append(b"\n")

    def _append(self, data: bytes) -> None:
        created = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def get(self, key: str) -> Optional[dict[str, Any]]:
        return self._records.get(key)

    def put(self, key: str, record: dict[str, Any]) -> None:
        """Persist one finished judgment (durably) before anyone relies on it."""
        record = {"key": key, **record}
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            self._append(line)
            self._records[key] = record

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, key: str) -> bool:
        return key in self._records
