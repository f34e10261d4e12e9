"""The content-addressed stage store: keys, atomic publication, locking, crash behaviour."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from alignpipe.cache import MANIFEST, StageStore, canonical_json, stage_key


def _build(store: StageStore, key: str, compute, force: bool = False, stage: str = "dpo"):
    return store.build(
        stage, key, code="c0de", config={"beta": 0.1}, inputs={"data.dir": "sha256:d1"}, upstream={"sft": "a" * 64},
        compute=compute, force=force,
    )  # fmt: skip


def _writer(text: str = "weights", metrics=None):
    def compute(out: Path, resume: Path):
        (out / "model.bin").write_text(text)
        (out / "sub").mkdir()
        (out / "sub" / "log.txt").write_text("ok")
        return metrics if metrics is not None else {"loss": 0.5}

    return compute


def test_key_is_stable_and_sensitive_to_every_input():
    inputs = {"data.dir": "sha256:d1"}
    base = stage_key("dpo", "c1", {"b": 1, "a": [1, 2]}, inputs, {"sft": "k1"})
    assert base == stage_key("dpo", "c1", {"a": (1, 2), "b": 1}, dict(inputs), {"sft": "k1"})  # key order, tuple vs list
    assert len(base) == 64
    variants = [
        stage_key("sft", "c1", {"b": 1, "a": [1, 2]}, inputs, {"sft": "k1"}),
        stage_key("dpo", "c2", {"b": 1, "a": [1, 2]}, inputs, {"sft": "k1"}),
        stage_key("dpo", "c1", {"b": 2, "a": [1, 2]}, inputs, {"sft": "k1"}),
        stage_key("dpo", "c1", {"b": 1, "a": [1, 2]}, {"data.dir": "sha256:d2"}, {"sft": "k1"}),
        stage_key("dpo", "c1", {"b": 1, "a": [1, 2]}, inputs, {"sft": "k2"}),
    ]
    assert len({base, *variants}) == 6


def test_canonical_json_rejects_unknown_types_by_name():
    with pytest.raises(TypeError, match="object"):
        canonical_json({"x": object()})
    assert canonical_json({"p": Path("/a"), "s": {2, 1}}) == '{"p":"/a","s":[1,2]}'


def test_build_publishes_a_manifest_listing_files_and_reuses_it(tmp_path):
    store = StageStore(tmp_path / "store")
    key = "f" * 64
    first = _build(store, key, _writer())
    assert not first.cached
    assert first.out_dir == tmp_path / "store" / "dpo" / key[:16]
    manifest = json.loads((first.out_dir / MANIFEST).read_text())
    assert manifest["key"] == key and manifest["stage"] == "dpo" and manifest["code"] == "c0de"
    assert manifest["config"] == {"beta": 0.1} and manifest["upstream"] == {"sft": "a" * 64}
    assert manifest["inputs"] == {"data.dir": "sha256:d1"}
    assert set(manifest["libraries"]) == {"torch", "transformers", "peft", "accelerate", "datasets"}
    assert manifest["libraries"]["torch"].startswith("2.") and manifest["pid"] > 0 and manifest["host"]
    assert manifest["metrics"] == {"loss": 0.5}
    assert manifest["files"] == [{"path": "model.bin", "size": 7}, {"path": "sub/log.txt", "size": 2}]

    def must_not_run(out, resume):
        raise AssertionError("recomputed a cached key")

    second = _build(store, key, must_not_run)
    assert second.cached and second.manifest == first.manifest
    assert not store.resume_dir("dpo", key).exists()
    assert [p.name for p in (tmp_path / "store" / "dpo").iterdir() if p.is_dir()] == [key[:16]]


def test_a_crash_leaves_no_manifest_but_keeps_the_resume_dir(tmp_path):
    store = StageStore(tmp_path / "store")
    key = "c" * 64

    def crash(out: Path, resume: Path):
        (resume / "checkpoint-10").write_text("step 10")
        (out / "model.bin").write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        _build(store, key, crash)
    assert store.lookup("dpo", key) is None
    assert not store.output_dir("dpo", key).exists()
    assert not list((tmp_path / "store" / "dpo").glob(".tmp-*"))

    seen = []

    def resume_then_finish(out: Path, resume: Path):
        seen.append((resume / "checkpoint-10").read_text())
        return _writer()(out, resume)

    assert not _build(store, key, resume_then_finish).cached
    assert seen == ["step 10"]
    assert not store.resume_dir("dpo", key).exists()  # removed after success


def test_bad_metrics_fail_the_build(tmp_path):
    store = StageStore(tmp_path / "store")
    with pytest.raises(TypeError, match="'acc'"):
        _build(store, "b" * 64, _writer(metrics={"acc": "high"}))
    assert store.lookup("dpo", "b" * 64) is None


def test_concurrent_builds_of_one_key_compute_once(tmp_path):
    store = StageStore(tmp_path / "store")
    key = "d" * 64
    computed, results, errors = [], [], []

    def slow(out: Path, resume: Path):
        computed.append(threading.get_ident())
        time.sleep(0.3)
        return _writer("from " + str(threading.get_ident()))(out, resume)

    def worker():
        try:
            results.append(_build(store, key, slow))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(computed) == 1
    assert sorted(r.cached for r in results) == [False, True, True]
    assert len({r.manifest.created for r in results}) == 1
    assert store.lookup("dpo", key) is not None
    assert (store.output_dir("dpo", key) / "model.bin").read_text() == f"from {computed[0]}"
    assert not list((tmp_path / "store" / "dpo").glob(".tmp-*"))


def test_output_that_appeared_meanwhile_wins(tmp_path):
    """A writer that bypassed the lock (e.g. flock unsupported) published first: keep theirs."""
    store = StageStore(tmp_path / "store")
    key = "e" * 64
    other = StageStore(tmp_path / "store")

    def race(out: Path, resume: Path):
        # The "other run" publishes the same key while we are still computing.
        other._publish("dpo", key, _prepared(other, key), replace=False)
        return _writer("ours")(out, resume)

    result = _build(store, key, race)
    assert (result.out_dir / "model.bin").read_text() == "theirs"
    assert result.manifest.metrics == {"loss": 1.0}
    assert not list((tmp_path / "store" / "dpo").glob(".tmp-*"))


def _prepared(store: StageStore, key: str) -> Path:
    """A complete output in a temp dir, as another run's build would leave it before renaming."""
    from alignpipe.cache import Manifest, _list_files, _write_json_atomic

    tmp = store.stage_dir("dpo") / f".other-{key[:16]}"
    tmp.mkdir(parents=True)
    (tmp / "model.bin").write_text("theirs")
    manifest = Manifest("dpo", key, "c0de", {}, {}, {}, {"loss": 1.0}, "now", 0.0, _list_files(tmp))
    _write_json_atomic(tmp / MANIFEST, manifest.to_dict())
    return tmp


def test_force_rebuilds_in_place(tmp_path):
    store = StageStore(tmp_path / "store")
    key = "a" * 64
    _build(store, key, _writer("v1"))
    again = _build(store, key, _writer("v2"), force=True)
    assert not again.cached
    assert (store.output_dir("dpo", key) / "model.bin").read_text() == "v2"
    assert not list((tmp_path / "store" / "dpo").glob(".old-*"))


def test_tampered_output_is_rebuilt(tmp_path):
    store = StageStore(tmp_path / "store")
    key = "9" * 64
    built = _build(store, key, _writer())
    (built.out_dir / "model.bin").unlink()
    assert store.lookup("dpo", key) is None
    assert not _build(store, key, _writer()).cached
    assert store.lookup("dpo", key) is not None


def test_leftovers_of_a_killed_build_are_swept(tmp_path):
    store = StageStore(tmp_path / "store")
    key = "7" * 64
    stale = store.stage_dir("dpo") / f".tmp-{key[:16]}-deadbeef"
    stale.mkdir(parents=True)
    (stale / "junk").write_text("x")
    _build(store, key, _writer())
    assert not stale.exists()
