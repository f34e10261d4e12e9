"""The stage cache never serves a stale output: keys cover data content, code, and hub revisions.

The end-to-end test runs the real CLI in fresh processes from a copy of the source tree, changes
real files on disk between runs (a data file's contents under the same path; the DPO loss's code)
and reads back which stages ran.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from rich.console import Console

from alignpipe.fingerprint import code_fingerprint
from alignpipe.inputs import DigestIndex
from alignpipe.stages import STAGE_MODULES
from tiny_pipeline import ALL_STAGES, tiny_pipeline_config

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("alignpipe", "pipeline_config", "flows", "tasks")


def _copy_tree(dest: Path) -> Path:
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _fingerprints(root: Path) -> dict[str, str]:
    return {name: code_fingerprint(module, root).digest for name, (module, _) in STAGE_MODULES.items()}


def test_code_fingerprint_follows_the_import_closure(tmp_path):
    root = _copy_tree(tmp_path / "src")
    before = _fingerprints(root)
    assert before == _fingerprints(REPO)  # same code, same fingerprint, wherever it lives
    assert "alignpipe.dpo.loss" in code_fingerprint("alignpipe.stages.dpo_stage", root).modules
    assert "alignpipe.dpo.loss" not in code_fingerprint("alignpipe.stages.reference_stage", root).modules

    loss = root / "alignpipe" / "dpo" / "loss.py"
    loss.write_text(loss.read_text() + "\n# a comment changes no code\n")
    assert _fingerprints(root) == before
    loss.write_text(loss.read_text().replace("LOSS_TYPES = (", "LOSS_TYPES = ('sigmoid',) + ("))
    after = _fingerprints(root)
    assert [s for s in before if before[s] != after[s]] == ["dpo"]

    judge = root / "alignpipe" / "judge" / "parsing.py"  # reached through a function-level import
    judge.write_text(judge.read_text() + "\nX = 1\n")
    changed = _fingerprints(root)
    assert {s for s in after if after[s] != changed[s]} == {"pairs", "evaluate", "ood"}


@pytest.mark.parametrize(
    "source, takes_the_loss",
    [
        ("from alignpipe.dpo import preference_loss\n", True),  # the README's spelling
        ("from alignpipe.dpo import *\n", True),
        ("def f():\n    import alignpipe.dpo as dpo\n    return dpo.preference_loss\n", True),  # lazy, as an attribute
        ("from alignpipe.dpo import scoring\n", False),
        ("import alignpipe.dpo.scoring\n", False),
    ],
)
def test_a_lazy_re_export_is_in_the_key_of_a_module_that_takes_it_and_only_there(tmp_path, source, takes_the_loss):
    """alignpipe.dpo re-exports preference_loss through a PEP 562 __getattr__ (importlib, invisible
    to the AST closure); the fingerprint reads its LAZY_EXPORTS instead."""
    root = _copy_tree(tmp_path / "src")
    (root / "alignpipe" / "probe.py").write_text(source)
    before = code_fingerprint("alignpipe.probe", root)
    assert ("alignpipe.dpo.loss" in before.modules) is takes_the_loss
    loss = root / "alignpipe" / "dpo" / "loss.py"
    loss.write_text(loss.read_text().replace("LOSS_TYPES = (", "LOSS_TYPES = ('sigmoid',) + ("))
    assert (code_fingerprint("alignpipe.probe", root).digest != before.digest) is takes_the_loss


def test_lazy_exports_must_be_a_literal_the_fingerprint_can_read(tmp_path):
    root = _copy_tree(tmp_path / "src")
    init = root / "alignpipe" / "dpo" / "__init__.py"
    init.write_text(init.read_text().replace('"preference_loss": "alignpipe.dpo.loss",', '"preference_loss": "alignpipe.dpo." + "loss",'))
    with pytest.raises(ValueError, match="LAZY_EXPORTS must be a literal dict"):
        code_fingerprint("alignpipe.stages.dpo_stage", root)


def test_digest_index_hashes_once_and_sees_new_contents(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "imdb.jsonl").write_text('{"text": "good", "label": 1}\n')
    index_file = tmp_path / "digests.json"
    first = DigestIndex(index_file)
    d1 = first.digest(data)
    first.save()
    assert first.hashed_bytes > 0

    reloaded = DigestIndex(index_file)  # a later process: same size and mtime, nothing is read
    assert reloaded.digest(data) == d1 and reloaded.hashed_bytes == 0

    (data / "imdb.jsonl").write_text('{"text": "bad!", "label": 0}\n')  # same path, same size, new bytes
    os.utime(data / "imdb.jsonl", ns=(1, 1))
    assert DigestIndex(index_file).digest(data) != d1
    (data / "extra.jsonl").write_text("{}\n")
    assert DigestIndex(index_file).digest(data) not in (d1,)


class _FakeHub:
    """Answers the two hub API calls the key needs: a model's and a dataset's current commit."""

    def __init__(self):
        self.sha = {"models/org/tiny": "a" * 40, "datasets/org/data": "b" * 40}
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status, body=b""):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_HEAD(self):
                self._reply(200)

            def do_GET(self):
                path = self.path.split("?")[0].removeprefix("/api/")
                path = path.split("/revision/")[0]
                if path in hub.sha:
                    repo = path.split("/", 1)[1]
                    return self._reply(200, json.dumps({"id": repo, "sha": hub.sha[path], "siblings": []}).encode())
                self._reply(404, b'{"error": "not found"}')

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub.constants as hf_constants

    from alignpipe import hub

    server = _FakeHub()
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setattr(hf_constants, "ENDPOINT", server.url)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    hub._probe.cache_clear()
    yield server
    server.httpd.shutdown()
    hub._probe.cache_clear()


def test_hub_inputs_are_keyed_by_their_resolved_revision(fake_hub, tmp_path):
    from alignpipe.inputs import cached_revision, hub_ref
    from alignpipe.plan import plan_pipeline
    from pipeline_config.schema import PipelineConfig

    assert hub_ref("org/tiny", "model") == f"hub:model:org/tiny@{'a' * 40}"
    cfg = PipelineConfig.model_validate({"run_dir": str(tmp_path / "run"), "model": {"name_or_path": "org/tiny"}})
    plan = plan_pipeline(cfg, ["sft"], preflight=False)
    assert plan["sft"].inputs["model.model"] == f"hub:model:org/tiny@{'a' * 40}"
    fake_hub.sha["models/org/tiny"] = "c" * 40  # a new commit on the hub: a new key
    moved = plan_pipeline(cfg, ["sft"], preflight=False)
    assert moved["sft"].key != plan["sft"].key
    assert cached_revision("org/never-downloaded", "model") is None


def test_offline_the_local_hf_cache_revision_is_used(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    from alignpipe.inputs import hub_ref

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    refs = tmp_path / "datasets--org--data" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text("d" * 40)
    assert hub_ref("org/data", "dataset") == f"hub:dataset:org/data@{'d' * 40}"
    assert hub_ref("org/other", "dataset") == "hub:dataset:org/other@unresolved"


def test_reuse_under_other_library_versions_says_so_in_one_line(tmp_path):
    from alignpipe.pipeline import ConsoleReporter, run_pipeline
    from stage_doubles import catalog, tiny_config

    cfg = tiny_config(tmp_path)
    quiet = lambda: ConsoleReporter(Console(file=io.StringIO(), width=300))  # noqa: E731
    first = run_pipeline(cfg, ["sft"], catalog=catalog(), reporter=quiet())
    manifest_path = first.outcome("sft").out_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["libraries"]["torch"] = "1.0.0"
    manifest_path.write_text(json.dumps(manifest))
    reporter = quiet()
    again = run_pipeline(cfg, ["sft"], catalog=catalog(), reporter=reporter)
    assert again.reused == ["sft"]
    lines = [line for line in reporter.console.file.getvalue().splitlines() if "library versions" in line]
    assert len(lines) == 1
    assert lines[0].startswith("  sft: reusing an output built with other library versions (torch 1.0.0 -> 2.13")


def _ran(out: str) -> list[str]:
    line = next(line for line in out.splitlines() if line.startswith("ran: "))
    return [] if "nothing" in line else line.removeprefix("ran: ").split(", ")


@pytest.mark.slow
def test_new_data_contents_and_new_code_recompute_exactly_what_they_should(tmp_path, tiny_model_dir, shared_data):
    src = _copy_tree(tmp_path / "src")
    data = tmp_path / "data"
    data.mkdir()
    imdb = (shared_data / "imdb.jsonl").read_text().split("\n")
    (data / "imdb.jsonl").write_text("\n".join(imdb[:40]) + "\n")
    shutil.copy(shared_data / "cnn_dailymail.jsonl", data / "cnn_dailymail.jsonl")
    config = tiny_pipeline_config(tmp_path, tiny_model_dir, data={"dir": str(data), "builtin_fallback": False})
    env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}

    def stage_report() -> list[str]:
        out = subprocess.run([sys.executable, "-m", "alignpipe.cli", "stage", "report", "--no-track", "--config", str(config)],
                             env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        return _ran(out.stdout)

    assert stage_report() == ALL_STAGES
    assert stage_report() == []  # unchanged: everything reused

    (data / "imdb.jsonl").write_text("\n".join(imdb[40:80]) + "\n")  # same path, new contents
    assert stage_report() == ALL_STAGES

    loss = src / "alignpipe" / "dpo" / "loss.py"
    loss.write_text(loss.read_text().replace("LOSS_TYPES = (", "LOSS_TYPES = ('sigmoid',) + ("))
    assert stage_report() == ["dpo", "evaluate", "ood", "report"]  # never sft, pairs or reference

    manifest = json.loads(next((tmp_path / "run" / "store" / "dpo").glob("*/manifest.json")).read_text())
    assert "alignpipe.dpo.loss" in manifest["code_modules"] and manifest["libraries"]["torch"]
