"""One quick look at the Hugging Face hub per process, so offline machines do not pay for retries.

Without it every dataset or model lookup retries for ~30 s before giving up. When the hub does
not answer within a few seconds we set HF_HUB_OFFLINE / HF_DATASETS_OFFLINE for this process:
every adapter then goes straight to its offline source (data dir, packaged model, built-in data).
"""
from __future__ import annotations

import logging
import os
import urllib.request
from functools import lru_cache

log = logging.getLogger(__name__)

OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def is_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in OFFLINE_VARS)


def check_hub() -> bool:
    """True when the hub answers. The environment is read on every call (offline mode can be set at
    any time); the network probe runs once per process and, when it fails, sets offline mode."""
    return not is_offline() and _probe()


@lru_cache(maxsize=1)
def _probe(timeout_s: float = 4.0) -> bool:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/api/models?limit=1", method="HEAD"), timeout=timeout_s)
        return True
    except Exception as e:  # DNS failure, refused, timeout, HTTP error: all mean "not from here"
        log.warning("Hugging Face hub unreachable (%s): working offline", type(e).__name__)
        for var in OFFLINE_VARS:
            os.environ[var] = "1"
        return False
