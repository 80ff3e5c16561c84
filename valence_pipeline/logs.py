"""Logging set-up for the CLI and flows: one format, secrets redacted on every record.

Two entry points. `protect_process()` registers the configured secrets (both provider keys, the
database password) and redacts every log record this process creates, whoever configured its
logging: `tasks/__init__.py` calls it, so a flow process started by a worker (which loads the
flow file by path, configures logging through Prefect and never runs the CLI) is covered from
the moment it imports the flow. `setup_logging()` is the CLI's: the same, plus a log format.
"""

from __future__ import annotations

import logging

from pydantic import ValidationError

from valence_client.redaction import install_record_redaction, install_redaction, register_secret
from valence_pipeline.settings import get_settings

# Prefect's own loggers have their own handlers (console and the API handler that feeds the UI).
_PREFECT_LOGGERS = ("prefect", "prefect.flow_runs", "prefect.task_runs")


def protect_process() -> None:
    """Redact secrets from every log record of this process (safe to call again)."""
    try:
        secrets = get_settings().secrets()
    except ValidationError:
        secrets = []  # a broken configuration fails the run where settings are used, loudly
    for secret in secrets:
        register_secret(secret)
    install_record_redaction()
    install_redaction()
    for name in _PREFECT_LOGGERS:
        install_redaction(logging.getLogger(name))


def setup_logging(level: str | None = None) -> None:
    settings = get_settings()
    logging.basicConfig(
        level=(level or settings.log_level).upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    protect_process()
