"""Keep secrets out of logs, exception text, artifacts and stored rows.

Two kinds of secret: the API keys we were given (registered by value when a client is built)
and the signatures inside presigned URLs (recognised by shape, since every part URL has a new
one). `redact()` handles both; `RedactingFilter` applies it to every log record, including the
formatted exception text.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import types
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

REDACTED = "[REDACTED]"

_lock = threading.Lock()
_secrets: set[str] = set()

# Query parameters that carry signatures or credentials (AWS SigV2/SigV4, our emulator's HMAC).
_SIGNED_QUERY = re.compile(
    r"(?i)([?&](?:X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|Signature|AWSAccessKeyId|"
    r"sig|signature|token|api_key|apikey|key)=)[^&#\s'\"]+"
)
# S3 echoes what it was sent in SignatureDoesNotMatch errors; those elements carry signatures.
_S3_ECHO = re.compile(
    r"(?s)<(SignatureProvided|StringToSign|StringToSignBytes|CanonicalRequest|CanonicalRequestBytes|"
    r"AWSAccessKeyId)>.*?</\1>"
)
_AUTH_HEADER = re.compile(r"(?i)((?:x-api-key|authorization)['\"]?\s*[:=]\s*['\"]?(?:Bearer\s+)?)[^'\"\s,}]+")


def register_secret(value: str | None) -> None:
    """Remember a secret value so `redact` masks it wherever it appears."""
    if value and len(value) >= 4:
        with _lock:
            _secrets.add(value)


def redact(text: str) -> str:
    """Mask registered secrets, presigned-URL signatures and auth header values in `text`."""
    if not text:
        return text
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    text = _SIGNED_QUERY.sub(lambda m: m.group(1) + REDACTED, text)
    text = _S3_ECHO.sub(lambda m: f"<{m.group(1)}>{REDACTED}</{m.group(1)}>", text)
    return _AUTH_HEADER.sub(lambda m: m.group(1) + REDACTED, text)


class RedactedError(Exception):
    """Stands in for an exception whose text held a secret: its type's name and its text, the
    secrets masked. Our own errors are redacted when they are built; another library's (a
    driver quoting its connection URL, an HTTP error quoting a signed URL) are not."""


def without_secrets(exc: BaseException) -> BaseException:
    """`exc` itself if its text holds no secret, else a `RedactedError` with the text masked."""
    text = str(exc)
    clean = redact(text)
    return exc if clean == text else RedactedError(f"{type(exc).__name__}: {clean}")


def failures_redacted(fn: Callable[P, R]) -> Callable[P, R]:
    """`fn`, whose exceptions leave it without secrets in their text (`without_secrets`).

    For the functions under Prefect's tasks and flows: Prefect stores a failure's text in the
    run's state message and pickles a failed flow's exception into its result storage on the
    worker, both outside logging and its redaction. The traceback (code, not values) stays."""

    clean = without_secrets  # a closure, not a global: see below

    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            safe = clean(exc)
            if safe is exc:
                raise
            raise safe.with_traceback(exc.__traceback__) from None

    # Prefect resolves a flow's parameter annotations (strings, under `from __future__ import
    # annotations`) in its function's module namespace, `__globals__`: the wrapper gets
    # `fn`'s, else a `date` parameter could not be validated from JSON.
    wrapper = types.FunctionType(call.__code__, fn.__globals__, fn.__name__, None, call.__closure__)
    functools.update_wrapper(wrapper, fn)
    wrapper.__failures_redacted__ = True  # type: ignore[attr-defined]  # checked by the tests
    return wrapper


def redact_url(url: str) -> str:
    """A URL safe to log: the path stays, signature-bearing query values are masked."""
    return redact(url)


class RedactingFilter(logging.Filter):
    """Rewrites each record's message (args merged) and exception text through `redact`."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string must not lose the record
            message = str(record.msg)
        record.msg = redact(message)
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            formatter = logging.Formatter()
            record.exc_text = redact(formatter.formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


_installed: set[int] = set()


def install_redaction(logger: logging.Logger | None = None) -> None:
    """Attach the filter to every handler of `logger` (root by default) and to the logger.

    Filters on a logger do not see records propagated from children, so handlers get it too;
    calling this again after new handlers appear is safe.
    """
    target = logger or logging.getLogger()
    flt = _shared_filter
    if id(target) not in _installed:
        target.addFilter(flt)
        _installed.add(id(target))
    for handler in target.handlers:
        if flt not in handler.filters:
            handler.addFilter(flt)


_shared_filter = RedactingFilter()
_factory_installed = False


def install_record_redaction() -> None:
    """Redact every log record of this process when it is created (idempotent).

    Handler filters only cover the handlers that exist when they are installed; a process whose
    logging is configured by someone else (Prefect's engine in a worker-run flow process, a
    `dictConfig` that replaces handlers later) would otherwise pass records through unfiltered.
    A record factory sees every record of every logger before any handler does.
    """
    global _factory_installed
    with _lock:
        if _factory_installed:
            return
        previous = logging.getLogRecordFactory()

        def redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            _shared_filter.filter(record)
            return record

        logging.setLogRecordFactory(redacting_factory)
        _factory_installed = True
