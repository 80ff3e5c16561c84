"""One logger per module, each with the redacting filter attached.

A filter on the `valence_client` logger does not see records created by its children
(`valence_client.transport`, ...), so every module logger gets the filter itself. The filter
rewrites the record in place, so every handler downstream (root, caplog, files) sees only the
redacted text.
"""

from __future__ import annotations

import logging

from valence_client.redaction import install_redaction

PACKAGE_LOGGER = "valence_client"


def get_logger(name: str) -> logging.Logger:
    """The module's logger with redaction installed (`name` is the module's `__name__`)."""
    logger = logging.getLogger(name)
    install_redaction(logger)
    return logger


# Third-party loggers that print request URLs (urllib3 logs every request line at DEBUG,
# presigned query string included), so they get the same filter.
HTTP_LOGGERS = ("urllib3.connectionpool", "urllib3.util.retry", "requests")


def protect_http_loggers() -> None:
    """Install redaction on the HTTP stack's own loggers."""
    for name in HTTP_LOGGERS:
        install_redaction(logging.getLogger(name))
