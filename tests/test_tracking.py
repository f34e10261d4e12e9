"""MLflow tracking over fake stages: run layout, tags, cached headlines, failures, secrets."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Annotated

import pytest
from rich.console import Console

from alignpipe.pipeline import ConsoleReporter, StageFailed, run_pipeline
from alignpipe.plan import StageCatalog
from alignpipe.stages.base import StageSpec
from alignpipe.tracking import (
    REDACTED,
    PipelineTracker,
    flatten_params,
    metric_name,
    redact_uri,
    resolve_tracking_uri,
)
from pipeline_config.slices import From, StageConfig
from stage_doubles import ORDER, calls, make_specs, tiny_config

TESTS_DIR = Path(__file__).resolve().parent
REPO = TESTS_DIR.parent


@pytest.fixture(scope="module")
def shared_db(tmp_path_factory) -> str:
    """One sqlite store for the module: creating MLflow's tables costs seconds per database."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def cfg(tmp_path, shared_db, request):
    """A fresh run_dir and a fresh experiment (named after the test) in the shared store."""
    return tiny_config(tmp_path, tracking__tracking_uri=shared_db, tracking__experiment=request.node.name)


def _tracked_run(cfg, specs=None, fail=()):
    tracker = PipelineTracker(cfg)
    result = run_pipeline(cfg, catalog=StageCatalog.of(specs or make_specs(fail)), tracker=tracker, reporter=ConsoleReporter(Console(file=io.StringIO())))
    return tracker, result


def _client(cfg):
    from mlflow.tracking import MlflowClient

    return MlflowClient(resolve_tracking_uri(cfg))


def _children(client, parent_id):
    runs = client.search_runs(
        [client.get_run(parent_id).info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    return {r.data.tags["stage"]: r for r in runs}


def test_parent_and_stage_runs_carry_tags_params_and_headlines(cfg, tmp_path):
    first, _ = _tracked_run(cfg)
    second, result = _tracked_run(cfg)
    assert result.executed == []
    client = _client(cfg)

    for tracker, cached in ((first, "false"), (second, "true")):
        parent = client.get_run(tracker.run_id)
        assert parent.info.status == "FINISHED"
        assert parent.data.tags["pipeline"] == cfg.preset
        assert parent.data.tags["prefect_flow_run_id"] == "none"
        assert parent.data.params["dpo.beta"] == "0.1"  # the whole config, flattened
        # Headline metrics on the parent, also when every stage was reused.
        assert parent.data.metrics["evaluate/win_rate"] == 0.6
        assert parent.data.metrics["dpo/beta_seen"] == 0.1
        children = _children(client, tracker.run_id)
        assert sorted(children) == sorted(ORDER)
        for name, run in children.items():
            assert run.info.status == "FINISHED"
            assert run.data.tags["cached"] == cached
            assert run.data.tags["stage_key"] == result.outcome(name).key
        # Params are the stage's own slice only.
        assert set(children["dpo"].data.params) == {f"dpo.{k}" for k in cfg.dpo.model_dump()} | {"run_dir"}
        assert "evaluate.n_prompts" not in children["dpo"].data.params
        assert [a.path for a in client.list_artifacts(children["evaluate"].info.run_id)] == ["win_rates.json"]
        assert [a.path for a in client.list_artifacts(children["report"].info.run_id)] == ["report.md"]

    first_dpo = _children(client, first.run_id)["dpo"]
    history = client.get_metric_history(first_dpo.info.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 0.5), (2, pytest.approx(1 / 3))]
    # Artifacts live under <run_dir>/mlartifacts.
    assert client.get_experiment(client.get_run(first.run_id).info.experiment_id).artifact_location == (
        (tmp_path / "mlartifacts").resolve().as_uri()
    )


def test_a_failing_stage_marks_its_run_and_the_parent_failed(cfg):
    with pytest.raises(StageFailed):
        _tracked_run(cfg, fail={"dpo"})
    client = _client(cfg)
    (parent,) = client.search_runs(client.get_experiment_by_name(cfg.tracking.experiment).experiment_id,
                                   filter_string="tags.`alignpipe.kind` = 'pipeline'")  # fmt: skip
    assert parent.info.status == "FAILED"
    assert "dpo exploded" in parent.data.tags["error"]
    children = _children(client, parent.info.run_id)
    assert sorted(children) == ["dpo", "pairs", "reference", "sft"]
    assert children["dpo"].info.status == "FAILED"
    assert children["sft"].info.status == "FINISHED"


class SecretsSlice(StageConfig):
    judge: Annotated[dict, From("evaluate.judge")]


def test_secrets_are_never_logged(cfg, monkeypatch):
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv("OPENAI_API_KEY", secret)

    def run(ctx):
        (ctx.out_dir / "leak.txt").write_text(f"key={secret}")
        (ctx.out_dir / "fine.txt").write_text("nothing to see")
        return {"score": 1.0}

    spec = StageSpec(name="judge", upstream=(), config=SecretsSlice, run=run, artifacts=("leak.txt", "fine.txt"))
    secrets = {"api_key": "inline-secret", "hf_token": "hf_abcdefgh", "max_new_tokens": 64, "base_url": f"https://proxy/{secret}"}
    monkeypatch.setattr(SecretsSlice, "of", classmethod(lambda cls, c: cls(judge=secrets)))
    tracker, _ = _tracked_run(cfg, specs=[spec])
    client = _client(cfg)
    child = _children(client, tracker.run_id)["judge"]
    params = child.data.params
    assert params["judge.api_key"] == REDACTED and params["judge.hf_token"] == REDACTED
    assert params["judge.max_new_tokens"] == "64"
    assert params["judge.base_url"] == f"https://proxy/{REDACTED}"
    assert [a.path for a in client.list_artifacts(child.info.run_id)] == ["fine.txt"]
    logged = repr(client.get_run(tracker.run_id).data) + repr(child.data)
    assert secret not in logged and "inline-secret" not in logged


def test_flatten_truncates_and_metric_names_are_made_valid():
    flat = flatten_params({"a": {"b": [1, 2], "c": None, "long": "x" * 7000}, "empty": {}})
    assert flat == {"a.b": "[1, 2]", "a.c": "None", "a.long": "x" * 6000, "empty": "{}"}
    assert metric_name("win_rate@t=0.25") == "win_rate_t_0.25"
    assert metric_name("../../etc") == "etc"
    assert redact_uri("https://user:pw@mlflow.example:5000/x") == f"https://{REDACTED}@mlflow.example:5000/x"
    assert flatten_params({"tracking": {"uri": "https://bob:pw@host/x"}}) == {"tracking.uri": f"https://{REDACTED}@host/x"}


def test_tracking_uri_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    default = tiny_config(tmp_path).model_copy(update={"tracking": tiny_config(tmp_path).tracking.model_copy(update={"tracking_uri": None})})
    assert resolve_tracking_uri(default) == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert resolve_tracking_uri(default) == "http://env:5000"
    assert resolve_tracking_uri(tiny_config(tmp_path)) == f"sqlite:///{tmp_path / 'mlflow.db'}"


CONCURRENT_RUN = textwrap.dedent(
    """
    import sys, time, pathlib
    import io
    from rich.console import Console
    from alignpipe.pipeline import ConsoleReporter, run_pipeline
    from alignpipe.tracking import PipelineTracker
    from stage_doubles import catalog, tiny_config
    run_dir, uri, experiment, me, other = pathlib.Path(sys.argv[1]), *sys.argv[2:]
    (run_dir / f"ready-{me}").touch()
    while not (run_dir / f"ready-{other}").exists():  # start together
        time.sleep(0.01)
    cfg = tiny_config(run_dir, tracking__tracking_uri=uri, tracking__experiment=experiment)
    tracker = PipelineTracker(cfg, run_name=f"proc-{me}")
    run_pipeline(cfg, catalog=catalog(), tracker=tracker, reporter=ConsoleReporter(Console(file=io.StringIO())))
    """
)


@pytest.mark.slow
def test_two_processes_share_one_store_and_one_sqlite_db(cfg, tmp_path):
    """Same config, same run_dir, started together: each stage computed once, both runs logged.

    The sqlite file already exists (shared_db) so the test is about concurrent writes, not the
    one-off table creation, which open_client serializes with a file lock."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS_DIR)])}
    procs = [
        subprocess.Popen([sys.executable, "-c", CONCURRENT_RUN, str(tmp_path), cfg.tracking.tracking_uri,
                          cfg.tracking.experiment, me, other], env=env, cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
        for me, other in (("a", "b"), ("b", "a"))
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert sorted(calls(cfg)) == sorted(ORDER)  # every stage computed exactly once in total
    client = _client(cfg)
    parents = client.search_runs(client.get_experiment_by_name(cfg.tracking.experiment).experiment_id,
                                 filter_string="tags.`alignpipe.kind` = 'pipeline'")  # fmt: skip
    assert sorted(r.info.run_name for r in parents) == ["proc-a", "proc-b"]
    for parent in parents:
        assert parent.info.status == "FINISHED"
        assert parent.data.metrics["evaluate/win_rate"] == 0.6
        assert len(_children(client, parent.info.run_id)) == len(ORDER)


ORPHAN = textwrap.dedent(
    """
    import os, signal, sys, pathlib, time
    from alignpipe.tracking import PipelineTracker
    from stage_doubles import tiny_config
    run_dir, uri, experiment, mode = pathlib.Path(sys.argv[1]), *sys.argv[2:]
    tracker = PipelineTracker(tiny_config(run_dir, tracking__tracking_uri=uri, tracking__experiment=experiment), run_name=mode)
    tracker.__enter__()
    print(tracker.run_id, flush=True)
    if mode == "killed":
        os.kill(os.getpid(), signal.SIGKILL)  # no __exit__: the run stays RUNNING
    time.sleep(120)
    """
)


def test_runs_left_running_by_a_killed_process_are_marked_killed(cfg, tmp_path):
    """SIGKILL leaves a RUNNING run behind; the next run on this host finds its process gone and
    marks it KILLED, while a run whose process is alive is left alone."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS_DIR)])}
    args = [str(tmp_path), cfg.tracking.tracking_uri, cfg.tracking.experiment]

    def start(mode):
        return subprocess.Popen([sys.executable, "-c", ORPHAN, *args, mode], env=env, cwd=REPO, stdout=subprocess.PIPE, text=True)

    killed, alive = start("killed"), start("alive")
    killed_id, alive_id = killed.stdout.readline().strip(), alive.stdout.readline().strip()
    killed.wait(timeout=60)
    try:
        client = _client(cfg)
        assert client.get_run(killed_id).info.status == "RUNNING"  # what SIGKILL leaves behind
        with PipelineTracker(cfg, run_name="next") as tracker:
            pass
        assert client.get_run(killed_id).info.status == "KILLED"
        assert client.get_run(alive_id).info.status == "RUNNING"
        assert client.get_run(tracker.run_id).info.status == "FINISHED"
    finally:
        alive.kill()
        alive.wait()
