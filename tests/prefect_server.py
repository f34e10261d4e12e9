"""A real `prefect server start` for tests: its own PREFECT_HOME and SQLite file, a free port.

The fixture `prefect_server` (in conftest.py) yields a PrefectServer whose `env` is what child
processes (served flows, workers, the alignpipe CLI) need to talk to it; the test process itself
talks to it through `temporary_settings`. The server runs its scheduler service, so a deployment's
schedule creates flow runs exactly as in production.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Optional

PREFECT = str(Path(sys.executable).with_name("prefect"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(home: Path, api_url: Optional[str], **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL="INFO",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )
    if api_url:
        env["PREFECT_API_URL"] = api_url
    env.update(extra)
    return env


class PrefectServer:
    def __init__(self, home: Path, log_dir: Path):
        self.home = home
        self.log_dir = log_dir
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.env = child_env(home, self.api_url)
        self._procs: list[tuple[subprocess.Popen, Path]] = []

    def start(self, timeout: float = 120) -> "PrefectServer":
        env = child_env(
            self.home, None,
            PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{self.home / 'prefect.db'}",
            PREFECT_UI_API_URL=self.api_url,  # a port other than 4200 needs it for the UI
            PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2",  # production default 60: tests would wait
        )  # fmt: skip
        self.spawn("server", [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)], env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"prefect server did not come up in {timeout:.0f}s:\n{self.log('server')[-3000:]}")

    def spawn(self, name: str, argv: list[str], env: Optional[dict[str, str]] = None, cwd: Optional[Path] = None) -> subprocess.Popen:
        """Start a child process in its own session (so stop() ends its whole group); output to a log file."""
        log = self.log_dir / f"{name}.log"
        fh = open(log, "ab")
        proc = subprocess.Popen(argv, env=env or self.env, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        fh.close()
        self._procs.append((proc, log))
        return proc

    def run(self, argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
        """Run a command against this server to completion; stdout and stderr together."""
        return subprocess.run(argv, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)

    def stop_process(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        for proc, _ in reversed(self._procs):
            self.stop_process(proc)

    @contextmanager
    def client(self) -> Iterator:
        """A sync Prefect client on this server (for reading flow runs back)."""
        from prefect import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: self.api_url}), get_client(sync_client=True) as c:
            yield c

    def wait_for_flow_run(self, deployment_name: str, timeout: float, procs: Iterable[tuple[str, subprocess.Popen]] = ()):
        """The first completed flow run of the deployment; fails early, with logs, if a process died."""
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

        deadline = time.monotonic() + timeout
        with self.client() as c:
            while time.monotonic() < deadline:
                for name, proc in procs:
                    if proc.poll() is not None:
                        raise AssertionError(f"{name} exited with {proc.returncode}:\n{self.log(name)[-4000:]}")
                runs = c.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment_name])))
                done = [r for r in runs if r.state is not None and r.state.is_completed()]
                if done:
                    return done[0], runs
                failed = [r for r in runs if r.state is not None and r.state.is_final()]
                if failed:
                    logs = "\n".join(self.log(n)[-3000:] for n, _ in procs)
                    raise AssertionError(f"flow run {failed[0].name} ended {failed[0].state.type}: {failed[0].state.message}\n{logs}")
                time.sleep(1)
        logs = "\n".join(f"--- {n}\n{self.log(n)[-3000:]}" for n, _ in [("server", None), *procs])
        raise AssertionError(f"no completed run of deployment '{deployment_name}' within {timeout:.0f}s\n{logs}")
