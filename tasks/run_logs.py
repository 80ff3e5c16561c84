"""The pipeline's own log lines in the flow run's Logs tab (redacted), not only Prefect's."""

from __future__ import annotations

import logging

from valence_client.redaction import install_redaction

# Prefect attaches its API handler only to its own loggers; ours need it too.
PIPELINE_LOGGERS = ("valence_pipeline", "valence_client", "tasks", "flows")


def send_pipeline_logs_to_prefect() -> None:
    """Attach Prefect's API log handler to the pipeline's loggers, once per process.

    Lines from the engine's threads reach the run too: the threads carry the run's context.
    Every line passes the redaction filter first, so keys and signed URLs never leave.
    """
    from prefect.logging.handlers import APILogHandler

    for name in PIPELINE_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET or logger.level > logging.INFO:
            logger.setLevel(logging.INFO)
        if not any(isinstance(h, APILogHandler) for h in logger.handlers):
            logger.addHandler(APILogHandler())
        install_redaction(logger)
