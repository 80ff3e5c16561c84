"""Logging set-up for the CLI and flows: one format, secrets redacted on every handler."""

from __future__ import annotations

import logging

from valence_client.redaction import install_redaction, register_secret
from valence_pipeline.settings import get_settings

# Prefect's own loggers have their own handlers (console and the API handler that feeds the UI).
_PREFECT_LOGGERS = ("prefect", "prefect.flow_runs", "prefect.task_runs")


def setup_logging(level: str | None = None) -> None:
    settings = get_settings()
    for secret in (settings.valence_api_key, settings.valsea_api_key):
        if secret is not None:
            register_secret(secret.get_secret_value())
    logging.basicConfig(
        level=(level or settings.log_level).upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    install_redaction()
    for name in _PREFECT_LOGGERS:
        install_redaction(logging.getLogger(name))
