"""Expected failures are one line everywhere, Prefect's own logs included.

A stage that fails for a known reason (StageFailed: bad data, a judge that gave up, the validity
gate) is reported by our CLI in one line. Prefect's task and flow run loggers would print the full
traceback of the same exception twice above it; this filter keeps their message and drops the
traceback for those exception types only. Unexpected errors keep their tracebacks.
"""
from __future__ import annotations

import logging

from alignpipe.pipeline import StageFailed
from alignpipe.plan import PipelineError
from pipeline_config.loading import ConfigError

EXPECTED = (StageFailed, PipelineError, ConfigError)
PREFECT_RUN_LOGGERS = ("prefect.task_runs", "prefect.flow_runs", "prefect.flow_engine", "prefect.task_engine")


class OneLineExpectedFailures(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, EXPECTED):
            record.exc_info, record.exc_text = None, None
        return True


_FILTER = OneLineExpectedFailures()


def install() -> None:
    for name in PREFECT_RUN_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
