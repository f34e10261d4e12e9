"""`alignpipe run` with every stage in the store: no temporary Prefect server, still recorded.

Without a configured server, Prefect starts a temporary one for each process (about 9 s of the
cached demo's time on 2 cores) only to orchestrate seven cache hits. flows/run.py skips it then; a
configured server (here a real `prefect server start`) still gets its flow run, cached or not.
"""
from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from alignpipe.cli import app
from stage_doubles import ORDER, calls, tiny_config, use_doubles

REUSED_LINE = "every stage reused: recorded in MLflow without starting a temporary Prefect server"


def _invoke(*args):
    return CliRunner(env={"COLUMNS": "250"}).invoke(app, [str(a) for a in args])


@pytest.fixture
def stored(tmp_path, monkeypatch):
    """A config whose every stage (the orchestration doubles) is already in the store."""
    use_doubles(monkeypatch)
    run_dir = tmp_path / "run"
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"preset": "cachedtest", "run_dir": str(run_dir),
                                    "tracking": {"tracking_uri": f"sqlite:///{run_dir / 'mlflow.db'}"}}))  # fmt: skip
    first = _invoke("stage", "report", "--config", path, "--no-track")
    assert first.exit_code == 0, first.output
    cfg = tiny_config(run_dir)
    assert calls(cfg) == ORDER
    return path, cfg


def test_a_run_with_nothing_to_compute_starts_no_temporary_server_and_is_recorded(stored, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    from prefect.server.api import server
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    path, cfg = stored

    def refuse(*args, **kwargs):
        raise AssertionError("a temporary Prefect server was started for a run with nothing to compute")

    monkeypatch.setattr(server.SubprocessASGIServer, "start", refuse)
    with temporary_settings(updates={PREFECT_HOME: str(tmp_path / "prefect-home")}, restore_defaults={PREFECT_API_URL}):
        result = _invoke("run", "--config", path)
    assert result.exit_code == 0, result.output
    assert REUSED_LINE in result.output and "0 ran, 7 reused" in result.output
    assert calls(cfg) == ORDER  # nothing ran again
    parent = MlflowClient(cfg.tracking.tracking_uri).search_runs(
        [MlflowClient(cfg.tracking.tracking_uri).get_experiment_by_name(cfg.tracking.experiment).experiment_id],
        filter_string="tags.`alignpipe.entrypoint` = 'run'",
    )  # fmt: skip
    assert len(parent) == 1 and parent[0].info.status == "FINISHED" and parent[0].info.run_id in result.output

    # something to compute: the flow runs as always (stopped here at its door)
    import flows.pipeline

    def flow(cfg, plan, **kwargs):
        raise SystemExit(f"flow: {[p.name for p in plan if p.will_run]}")

    monkeypatch.setattr(flows.pipeline, "run_flow", flow)
    changed = _invoke("run", "--config", path, "--set", "dpo.beta=0.5")
    assert REUSED_LINE not in changed.output
    assert str(changed.exception) == "flow: ['dpo', 'evaluate', 'ood', 'report']"


def test_with_a_configured_server_a_cached_run_is_still_a_flow_run_there(stored, prefect_server):
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    path, cfg = stored
    with temporary_settings(updates={PREFECT_API_URL: prefect_server.api_url, PREFECT_HOME: str(prefect_server.home)}):
        result = _invoke("run", "--config", path)
    assert result.exit_code == 0, result.output
    assert REUSED_LINE not in result.output and "0 ran, 7 reused" in result.output
    with prefect_server.client() as c:
        runs = c.read_flow_runs()
    assert [r.state.type.value for r in runs] == ["COMPLETED"] and runs[0].flow_id is not None
    assert calls(cfg) == ORDER
