"""What the MLflow UI shows of alignpipe's runs, in a real browser (Debian's headless Chromium).

Two tracked pipeline runs (the stage doubles, beta 0.1 and 0.5) are recorded; `alignpipe ui
--start` serves the store; the experiment page opens on its runs (not on MLflow 3's GenAI
overview), a parent run expands into its seven nested stage runs with their datasets and the
trained models, and the two runs compare side by side, beta differing.
"""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest
from rich.console import Console

from alignpipe.pipeline import ConsoleReporter, run_pipeline
from alignpipe.tracking import PipelineTracker, ui_url
from prefect_server import free_port
from stage_doubles import ORDER, catalog, tiny_config

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip


@pytest.fixture
def ui(tmp_path):
    """Two tracked runs, then `alignpipe ui --start` on the store; yields (base url, config, runs)."""
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run does)")
    runs = []
    for beta in (0.1, 0.5):
        cfg = tiny_config(tmp_path, dpo__beta=beta)
        tracker = PipelineTracker(cfg, run_name=f"ui-beta-{beta}")
        run_pipeline(cfg, catalog=catalog(), tracker=tracker, reporter=ConsoleReporter(Console(file=io.StringIO())))
        runs.append(tracker)
    config = tmp_path / "ui.yaml"
    config.write_text(json.dumps(tiny_config(tmp_path).model_dump(mode="json")))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "alignpipe.cli", "ui", "--start", "--port", str(port), "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError("the MLflow UI did not come up")
                time.sleep(1)
        yield port, runs
    finally:
        import os
        import signal

        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_the_ui_shows_runs_nested_stages_and_a_comparison(ui):
    from playwright.sync_api import sync_playwright

    port, runs = ui
    first, second = runs
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})

        # The experiment opens on its runs: the training view, not the GenAI traces overview.
        page.goto(ui_url(f"http://127.0.0.1:{port}", first.experiment_id))
        page.get_by_role("heading", name="Runs").wait_for(timeout=60_000)
        for tracker in runs:
            page.get_by_text(tracker.run_name, exact=True).wait_for(timeout=30_000)
        assert page.get_by_text("Detect Issues").count() == 0

        # A parent run expands into one nested run per stage, each with the dataset it read.
        row = page.locator("[role=row]").filter(has_text=first.run_name).first
        row.get_by_role("button").first.click()
        for stage in ORDER:
            page.get_by_role("link", name=stage, exact=True).first.wait_for(timeout=30_000)

        # Two runs side by side: the comparison page lists both and the parameter that differs.
        ids = json.dumps([first.run_id, second.run_id])
        page.goto(f"http://127.0.0.1:{port}/#/compare-runs?runs={ids}&experiments={json.dumps([first.experiment_id])}")
        page.get_by_text("dpo.beta", exact=True).first.wait_for(timeout=60_000)
        for tracker in runs:
            page.get_by_text(tracker.run_name).first.wait_for(timeout=30_000)
        text = page.inner_text("body")
        assert "0.1" in text and "0.5" in text
        browser.close()
