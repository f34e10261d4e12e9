"""What a stage reads from outside the store, by content: part of its cache key.

- A local file or directory (data.dir, data.local_path, a local model directory or GGUF file, a
  local judge or reward model): the sha256 of its bytes; a directory hashes every file's relative
  path and digest. Hashing streams in 1 MiB blocks and is remembered by (path, size, mtime, inode)
  in an index file beside the store, so a multi-GB model is read once, not at every plan.
- A hub model or dataset: the commit its revision resolves to when the hub answers; else the commit
  the local Hugging Face cache holds for it; else "unresolved", which the manifest then records.

`slice_inputs` finds the inputs of a stage slice by walking it: every ModelConfig and DataConfig in
it, and every field typed ModelRef (a local path or a hub id).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import uuid
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel

from pipeline_config.reads import not_counted
from pipeline_config.schema import DataConfig, ModelConfig, ModelRef

log = logging.getLogger(__name__)

BLOCK = 1 << 20
UNRESOLVED = "unresolved"
BUILTIN_DATA = Path(__file__).parent / "builtin_data"


class DigestIndex:
    """sha256 of local files, remembered by (size, mtime_ns, inode) in a JSON file (or in memory only)."""

    def __init__(self, path: Optional[Path] = None):
        self.path = path
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, Any]] = {}
        self._dirty = False
        if path is not None and path.exists():
            try:
                self._entries = json.loads(path.read_text())
            except (OSError, ValueError):
                log.warning("%s: unreadable digest index; files will be hashed again", path)
        self.hashed_bytes = 0  # bytes actually read by this index (tests and logs)

    def file(self, path: Path) -> str:
        path = path.resolve()
        st = path.stat()
        stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
        with self._lock:
            hit = self._entries.get(str(path))
            if hit is not None and hit["stamp"] == stamp:
                return hit["sha256"]
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(BLOCK):
                digest.update(block)
        with self._lock:
            self.hashed_bytes += st.st_size
            self._entries[str(path)] = {"stamp": stamp, "sha256": digest.hexdigest()}
            self._dirty = True
        return digest.hexdigest()

    def tree(self, root: Path) -> str:
        """One digest for a directory: every file's relative path and content (symlinks followed)."""
        digest = hashlib.sha256()
        files = sorted(p for p in root.rglob("*") if p.is_file())
        for p in files:
            digest.update(f"{p.relative_to(root).as_posix()}\0{self.file(p)}\n".encode())
        return digest.hexdigest()

    def digest(self, path: Path) -> str:
        return f"sha256:{self.tree(path) if path.is_dir() else self.file(path)}"

    def save(self) -> None:
        if self.path is None or not self._dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}")
        with self._lock:
            tmp.write_text(json.dumps(self._entries))
            self._dirty = False
        os.replace(tmp, self.path)


# ----------------------------------------------------------------------------------------
# Hub revisions
# ----------------------------------------------------------------------------------------
def hub_revision(repo_id: str, kind: str, revision: Optional[str] = None) -> str:
    """The commit sha of a hub repo: asked from the hub when it answers, else read from the local cache."""
    from alignpipe.hub import check_hub

    if check_hub():
        try:
            from huggingface_hub import HfApi

            api = HfApi()
            info = api.model_info(repo_id, revision=revision) if kind == "model" else api.dataset_info(repo_id, revision=revision)
            if info.sha:
                return info.sha
        except Exception as e:  # private, renamed, rate-limited: fall back to what is cached
            log.warning("could not resolve the revision of %s %s on the hub (%s)", kind, repo_id, type(e).__name__)
    return cached_revision(repo_id, kind, revision) or UNRESOLVED


def cached_revision(repo_id: str, kind: str, revision: Optional[str] = None) -> Optional[str]:
    """The commit the local HF cache maps `revision` (default main) of repo_id to, if it holds one."""
    from huggingface_hub import constants

    folder = Path(constants.HF_HUB_CACHE) / f"{kind}s--{repo_id.replace('/', '--')}"
    ref = folder / "refs" / (revision or "main")
    try:
        return ref.read_text().strip() or None
    except OSError:
        return None


def hub_ref(repo_id: str, kind: str, revision: Optional[str] = None) -> str:
    return f"hub:{kind}:{repo_id}@{hub_revision(repo_id, kind, revision)}"


# ----------------------------------------------------------------------------------------
# What a slice reads
# ----------------------------------------------------------------------------------------
def model_ref(name_or_path: str, index: DigestIndex) -> str:
    """A local path by content, anything else as a hub model by revision."""
    path = Path(name_or_path).expanduser()
    return index.digest(path) if path.exists() else hub_ref(name_or_path, "model")


def model_source_inputs(model: ModelConfig, index: DigestIndex) -> dict[str, str]:
    """The base model as the SFT stage will load it (same resolution, offline fallback included)."""
    from alignpipe.models import resolve_source

    path, gguf = resolve_source(model.name_or_path, model.gguf_file, model.offline_fallback)
    if gguf is not None:
        return {"model": index.digest(Path(path) / gguf)}
    return {"model": model_ref(path, index)}


def data_inputs(data: DataConfig, index: DigestIndex) -> dict[str, str]:
    """Every dataset the data config can make a stage read."""
    from alignpipe.data.sources import HUB_DATASETS, task_datasets

    if data.task == "local":
        if not data.local_path:
            raise ValueError("data.local_path: required for task 'local'")
        path = Path(data.local_path).expanduser()
        if not path.is_file():
            raise ValueError(f"data.local_path: {path}: file not found")
        return {"data.local_path": index.digest(path)}
    if data.dir:
        path = Path(data.dir).expanduser()
        if not path.is_dir():
            raise ValueError(f"data.dir: {path}: not a directory")
        return {"data.dir": index.digest(path)}
    out = {f"dataset.{name}": hub_ref(HUB_DATASETS[name], "dataset") for name in task_datasets(data.task)}
    if data.builtin_fallback:  # offline, these files are what is read
        out["dataset.builtin"] = index.digest(BUILTIN_DATA)
    return out


def slice_inputs(config: BaseModel, index: DigestIndex, prefix: str = "") -> dict[str, str]:
    """{where: digest or hub ref} for everything outside the store that this slice makes a stage read."""
    with not_counted():  # keying on a value is not using it (pipeline_config/reads.py)
        return _slice_inputs(config, index, prefix)


def _slice_inputs(config: BaseModel, index: DigestIndex, prefix: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, field in type(config).model_fields.items():
        value = getattr(config, name)
        where = f"{prefix}{name}"
        if isinstance(value, ModelConfig):
            out.update({f"{where}.{k}": v for k, v in model_source_inputs(value, index).items()})
        elif isinstance(value, DataConfig):
            out.update({f"{where}.{k}": v for k, v in data_inputs(value, index).items()})
        elif isinstance(value, BaseModel):
            out.update(_slice_inputs(value, index, f"{where}."))
        elif value and any(isinstance(m, ModelRef) for m in field.metadata):
            out[where] = model_ref(str(value), index)
    return out
