"""Content-addressed store of stage outputs: a stage is recomputed only when its key changes.

    key = sha256(stage name, code fingerprint, canonical JSON of its config slice,
                 digests of the local files and hub revisions it reads, upstream keys)

The code fingerprint hashes every alignpipe module the stage imports (alignpipe/fingerprint.py),
the inputs are content digests (alignpipe/inputs.py). An upstream output's fingerprint is its key:
the key already names everything that output was computed from, so a change anywhere upstream
changes every key downstream of it. The manifest also records the library versions an output was
built with; reusing it under other versions is allowed, and said in one warning line.

Layout under <run_dir>/store/<stage>/ (k16 = the first 16 hex digits of the key):

    <k16>/                  a published output; complete if and only if manifest.json exists
    <k16>.lock              flock held while building, so concurrent runs compute a key once
    .tmp-<k16>-<uuid>/      where a build writes; renamed into place when the stage returns
    .resume-<k16>/          stable scratch for checkpoints, so a killed training stage resumes

The manifest is written inside the temp directory as the very last file, then the directory is
renamed into place in one step: a crash at any point leaves either nothing or a complete output.
Nothing here knows about Prefect or MLflow: the store works the same from a bare GPU box.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import socket
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path, PurePath
from typing import Any, Callable, Iterator, Mapping, Optional

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
KEY_PREFIX_LEN = 16

# compute(out_dir, resume_dir) -> headline metrics; writes the stage's output into out_dir.
Compute = Callable[[Path, Path], Mapping[str, Any]]


def _jsonable(obj: Any) -> Any:
    """json.dumps fallback: the few non-JSON types a config slice may legitimately hold."""
    if hasattr(obj, "model_dump"):  # pydantic model
        return obj.model_dump(mode="json")
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    raise TypeError(f"config slice value of type {type(obj).__name__} is not JSON-serializable: {obj!r}")


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace, tuples as lists: equal configs always give equal text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_jsonable, allow_nan=True)


def stage_key(
    name: str, code: str, config: Mapping[str, Any], inputs: Mapping[str, str], upstream_keys: Mapping[str, str]
) -> str:
    """The cache key of one stage output (64 hex digits)."""
    payload = canonical_json(
        {"stage": name, "code": code, "config": config, "inputs": dict(inputs), "upstream": dict(upstream_keys)}
    )
    return hashlib.sha256(payload.encode()).hexdigest()


TRACKED_LIBRARIES = ("torch", "transformers", "peft", "accelerate", "datasets")


def library_versions() -> dict[str, str]:
    out = {}
    for name in TRACKED_LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def version_drift(built: Mapping[str, str], now: Mapping[str, str]) -> list[str]:
    """'torch 2.12.0 -> 2.13.0' for each tracked library whose version differs."""
    return [f"{k} {built[k]} -> {now.get(k, 'not installed')}" for k in sorted(built) if built[k] != now.get(k, "not installed")]


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative to the output directory, POSIX separators
    size: int


@dataclass(frozen=True)
class Manifest:
    """What a published output was computed from and what it holds. Its presence marks completion."""

    stage: str
    key: str
    code: str  # the stage's code fingerprint
    config: dict[str, Any]
    inputs: dict[str, str]  # what it read outside the store: content digests, hub revisions
    upstream: dict[str, str]  # upstream stage -> key
    metrics: dict[str, float]
    created: str  # ISO-8601 UTC
    seconds: float  # wall time of the computation that produced it
    files: tuple[FileEntry, ...] = field(default_factory=tuple)
    libraries: dict[str, str] = field(default_factory=dict)  # versions it was built with
    host: str = ""  # where it was built (a work-pool worker, a GPU box...)
    pid: int = 0
    code_modules: tuple[str, ...] = ()  # the modules the code fingerprint covers
    origin: dict[str, str] = field(default_factory=dict)  # who ran it, e.g. the Prefect flow run and work pool

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "key": self.key,
            "code": self.code,
            "config": self.config,
            "inputs": self.inputs,
            "upstream": self.upstream,
            "metrics": self.metrics,
            "created": self.created,
            "seconds": self.seconds,
            "libraries": self.libraries,
            "host": self.host,
            "pid": self.pid,
            "code_modules": list(self.code_modules),
            "origin": self.origin,
            "files": [{"path": f.path, "size": f.size} for f in self.files],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Manifest":
        return cls(
            stage=data["stage"],
            key=data["key"],
            code=data["code"],
            config=dict(data["config"]),
            inputs=dict(data["inputs"]),
            upstream=dict(data["upstream"]),
            metrics={k: float(v) for k, v in data["metrics"].items()},
            created=data["created"],
            seconds=float(data["seconds"]),
            files=tuple(FileEntry(f["path"], int(f["size"])) for f in data["files"]),
            libraries=dict(data.get("libraries", {})),
            host=data.get("host", ""),
            pid=int(data.get("pid", 0)),
            code_modules=tuple(data.get("code_modules", ())),
            origin=dict(data.get("origin", {})),
        )


@dataclass(frozen=True)
class BuildResult:
    manifest: Manifest
    out_dir: Path
    cached: bool  # True when the output already existed and compute was not called


def validate_metrics(stage: str, metrics: Any) -> dict[str, float]:
    """A stage must return {name: number}; anything else is a bug worth failing loudly on."""
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise TypeError(f"stage '{stage}' returned {type(metrics).__name__}, expected a dict of metrics")
    out: dict[str, float] = {}
    for k, v in metrics.items():
        if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"stage '{stage}' returned metric {k!r}={v!r}: metrics must be str -> number")
        out[k] = float(v)
    return out


def _list_files(root: Path) -> tuple[FileEntry, ...]:
    entries = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath, name)
            entries.append(FileEntry(p.relative_to(root).as_posix(), p.stat().st_size))
    return tuple(sorted(entries, key=lambda e: e.path))


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=2)  # insertion order: a stage's metrics keep the order it chose
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class StageStore:
    """Publishes, finds and verifies stage outputs under one root (normally <run_dir>/store)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()

    # -- paths -----------------------------------------------------------------------------
    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def output_dir(self, stage: str, key: str) -> Path:
        return self.stage_dir(stage) / key[:KEY_PREFIX_LEN]

    def resume_dir(self, stage: str, key: str) -> Path:
        return self.stage_dir(stage) / f".resume-{key[:KEY_PREFIX_LEN]}"

    def lock_path(self, stage: str, key: str) -> Path:
        return self.stage_dir(stage) / f"{key[:KEY_PREFIX_LEN]}.lock"

    def failure_log(self, stage: str, key: str) -> Path:
        """Where the traceback of a failed build goes, so the console needs only one line."""
        path = self.stage_dir(stage) / f"{key[:KEY_PREFIX_LEN]}.failed.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    # -- reading ---------------------------------------------------------------------------
    def lookup(self, stage: str, key: str) -> Optional[Manifest]:
        """The manifest of a complete, intact output for this key, else None."""
        out = self.output_dir(stage, key)
        try:
            manifest = Manifest.from_dict(json.loads((out / MANIFEST).read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as e:
            log.warning("%s: unreadable manifest (%s: %s); it will be rebuilt", out / MANIFEST, type(e).__name__, e)
            return None
        if manifest.key != key or manifest.stage != stage:
            log.warning("%s: manifest belongs to %s/%s; it will be rebuilt", out, manifest.stage, manifest.key[:16])
            return None
        for entry in manifest.files:
            try:
                size = (out / entry.path).stat().st_size
            except FileNotFoundError:
                size = -1
            if size != entry.size:
                log.warning("%s: %s is missing or changed size; the output will be rebuilt", out, entry.path)
                return None
        return manifest

    # -- writing ---------------------------------------------------------------------------
    @contextmanager
    def locked(self, stage: str, key: str, on_wait: Optional[Callable[[], None]] = None) -> Iterator[None]:
        """Exclusive per-key lock across threads and processes (flock on its own open file)."""
        path = self.lock_path(stage, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("%s/%s is being built by another run; waiting for it", stage, key[:16])
                if on_wait is not None:
                    on_wait()
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def build(
        self,
        stage: str,
        key: str,
        *,
        code: str,
        config: Mapping[str, Any],
        inputs: Mapping[str, str],
        upstream: Mapping[str, str],
        compute: Compute,
        code_modules: tuple[str, ...] = (),
        origin: Optional[Mapping[str, str]] = None,
        force: bool = False,
        on_wait: Optional[Callable[[], None]] = None,
    ) -> BuildResult:
        """Return the output for `key`, computing it only if absent (or when `force`).

        `compute(out_dir, resume_dir)` writes into a fresh temp directory and returns metrics.
        If it raises, the temp directory is deleted and no manifest exists; the resume
        directory is kept so the next attempt can continue from its checkpoints.
        """
        out = self.output_dir(stage, key)
        with self.locked(stage, key, on_wait):
            if not force:
                existing = self.lookup(stage, key)
                if existing is not None:
                    return BuildResult(existing, out, cached=True)
            self._sweep_leftovers(stage, key)
            tmp = self.stage_dir(stage) / f".tmp-{key[:KEY_PREFIX_LEN]}-{uuid.uuid4().hex}"
            tmp.mkdir(parents=True)
            resume = self.resume_dir(stage, key)
            resume.mkdir(parents=True, exist_ok=True)
            try:
                started = time.perf_counter()
                metrics = validate_metrics(stage, compute(tmp, resume))
                if (tmp / MANIFEST).exists():
                    raise RuntimeError(f"stage '{stage}' wrote {MANIFEST} itself; that name is reserved")
                manifest = Manifest(
                    stage=stage,
                    key=key,
                    code=code,
                    config=json.loads(canonical_json(config)),
                    inputs=dict(inputs),
                    upstream=dict(upstream),
                    metrics=metrics,
                    created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    seconds=round(time.perf_counter() - started, 3),
                    files=_list_files(tmp),
                    libraries=library_versions(),
                    host=socket.gethostname(),
                    pid=os.getpid(),
                    code_modules=tuple(code_modules),
                    origin=dict(origin or {}),
                )
                _write_json_atomic(tmp / MANIFEST, manifest.to_dict())  # last file written
                kept = self._publish(stage, key, tmp, replace=force)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            shutil.rmtree(resume, ignore_errors=True)
            return BuildResult(kept or manifest, out, cached=False)

    def _publish(self, stage: str, key: str, tmp: Path, replace: bool) -> Optional[Manifest]:
        """Rename tmp into place. Returns the manifest of an intact output found there instead."""
        out = self.output_dir(stage, key)
        try:
            os.rename(tmp, out)
            _fsync_dir(out.parent)
            return None
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
        existing = self.lookup(stage, key)
        if existing is not None and not replace:
            # Another writer published the same key first (only possible without the lock,
            # e.g. a filesystem where flock is a no-op): keep theirs, discard ours.
            log.info("%s/%s appeared while building; keeping the existing output", stage, key[:16])
            shutil.rmtree(tmp, ignore_errors=True)
            return existing
        old = self.stage_dir(stage) / f".old-{key[:KEY_PREFIX_LEN]}-{uuid.uuid4().hex}"
        os.rename(out, old)
        os.rename(tmp, out)
        _fsync_dir(out.parent)
        shutil.rmtree(old, ignore_errors=True)
        return None

    def _sweep_leftovers(self, stage: str, key: str) -> None:
        """Temp dirs of this key left by killed builds. Safe: we hold the key's lock."""
        k16 = key[:KEY_PREFIX_LEN]
        for pattern in (f".tmp-{k16}-*", f".old-{k16}-*"):
            for stale in self.stage_dir(stage).glob(pattern):
                log.info("removing %s left by an interrupted build", stale)
                shutil.rmtree(stale, ignore_errors=True)

