"""One error tree for both providers, picked by meaning in one function.

The public SDK's names are kept (`ValenceSDKException` ⊃ `UploadError`, `PredictionError`,
`AudioTooShortError`, `AudioTooLongError`, `FileSizeLimitExceededError`) so code written against
`valenceai` keeps catching the same classes. Every error carries what a caller needs to decide
what to do next: `status`, `error_code`, `request_id`/`job_id`, `retryable`, `provider`.

Messages go through `redaction.redact` when the error is built, so neither `str()` nor `repr()`
can leak an API key or a presigned-URL signature, however the error is later printed.

`error_from_response` is the only place that turns an HTTP answer into an exception.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, ClassVar

from valence_client._headers import header, retry_after
from valence_client.redaction import redact

_MAX_BODY_TEXT = 500


class ValenceSDKException(Exception):
    """Base of every error raised by `valence_client`.

    `retryable` says whether trying the same call again later can succeed; the transport uses it
    and so can task-level retry conditions (`retry_condition_fn=lambda t, r, s: err.retryable`).
    """

    default_retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: object = "",
        *,
        status: int | None = None,
        error_code: str | None = None,
        request_id: str | None = None,
        job_id: str | None = None,
        retryable: bool | None = None,
        provider: str | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        text = redact(str(message))
        super().__init__(text)
        self.message = text
        self.status = status
        self.error_code = error_code
        self.request_id = request_id
        self.job_id = job_id
        self.retryable = self.default_retryable if retryable is None else retryable
        self.provider = provider
        self.body = _safe_body(body)
        self.headers = dict(headers) if headers else {}

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        fields = {
            "status": self.status,
            "error_code": self.error_code,
            "request_id": self.request_id,
            "job_id": self.job_id,
            "retryable": self.retryable,
            "provider": self.provider,
        }
        shown = ", ".join(f"{k}={v!r}" for k, v in fields.items() if v is not None)
        return f"{type(self).__name__}({self.message!r}{', ' if shown else ''}{shown})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the fields across pickling (Prefect persists task exceptions).
        return (_rebuild, (type(self), self.message, dict(self.__dict__)))


def _rebuild(cls: type[ValenceSDKException], message: str, state: dict[str, Any]) -> ValenceSDKException:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


def _safe_body(body: Any) -> Any:
    """The answer body with every string redacted (a server may echo what it was sent)."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str):
        return redact(body[:_MAX_BODY_TEXT])
    if isinstance(body, dict):
        return {key: _safe_body(value) for key, value in body.items()}
    if isinstance(body, list):
        return [_safe_body(value) for value in body]
    return body


class UploadError(ValenceSDKException):
    """A multipart upload failed (initiate, a part, or complete)."""


class PredictionError(ValenceSDKException):
    """The provider failed the job, or it did not finish in the time allowed (retryable)."""


class InvalidRequestError(ValenceSDKException):
    """The request itself is wrong (a 4xx without a more specific meaning); do not retry."""


class InvalidInputError(InvalidRequestError, ValueError):
    """Bad arguments caught before any HTTP call. Also a `ValueError`, like the SDK raises."""


class MissingFileError(InvalidInputError, FileNotFoundError):
    """The audio file does not exist. Also a `FileNotFoundError`, like the SDK raises."""


class AudioTooShortError(InvalidRequestError):
    """400 `AUDIO_TOO_SHORT`."""

    def __init__(
        self,
        message: object = "Audio file is too short",
        min_duration: float | None = None,
        actual_duration: float | None = None,
        **fields: Any,
    ) -> None:
        super().__init__(message, **fields)
        self.min_duration = min_duration
        self.actual_duration = actual_duration


class AudioTooLongError(InvalidRequestError):
    """400 `AUDIO_TOO_LONG` or `FILE_TOO_LARGE`."""

    def __init__(
        self,
        message: object = "Audio file exceeds maximum allowed duration",
        max_duration: float | None = None,
        actual_duration: float | None = None,
        **fields: Any,
    ) -> None:
        super().__init__(message, **fields)
        self.max_duration = max_duration
        self.actual_duration = actual_duration


class FileSizeLimitExceededError(InvalidRequestError):
    """The file is larger than the API accepts (checked before upload, or HTTP 413)."""

    def __init__(
        self,
        message: object = "File size exceeds the allowed maximum",
        max_size_mb: float | None = None,
        actual_size_mb: float | None = None,
        **fields: Any,
    ) -> None:
        super().__init__(message, **fields)
        self.max_size_mb = max_size_mb
        self.actual_size_mb = actual_size_mb


class AuthenticationError(ValenceSDKException):
    """401/403: missing, invalid or unauthorised key (or an expired presigned URL)."""


class InsufficientCreditsError(ValenceSDKException):
    """402: the account is out of credits. Never retried: only a human can fix it."""


class NotFoundError(ValenceSDKException):
    """404/410: unknown id, or a result past its retention (Valence keeps about 24 h)."""


class JobNotReadyError(ValenceSDKException):
    """409: the job has not completed yet. The wait loop polls again; the transport does not."""

    def __init__(self, message: object = "", retry_after: float | None = None, **fields: Any) -> None:
        super().__init__(message, **fields)
        self.retry_after = retry_after


class RateLimitError(ValenceSDKException):
    """429: slow down. `retry_after` is the server's hint in seconds, when it gave one."""

    default_retryable = True

    def __init__(self, message: object = "", retry_after: float | None = None, **fields: Any) -> None:
        super().__init__(message, **fields)
        self.retry_after = retry_after


class ServerError(ValenceSDKException):
    """5xx (including Valsea's 503 "service not configured"): the provider's fault; retryable."""

    default_retryable = True


class APIConnectionError(ValenceSDKException):
    """No usable HTTP answer: refused, reset, dropped or timed out. Retryable.

    `may_have_arrived` is False only when the request certainly never reached the server
    (refused, connect timeout): for a creating call the difference is whether the provider
    may now have a job, and bill it, that we never heard about.
    """

    default_retryable = True
    may_have_arrived: bool = True


# --------------------------------------------------------------------------- mapping


def _body_fields(body: Any) -> tuple[str | None, str]:
    """(error_code, human message) from either provider's error body, or plain text."""
    if not isinstance(body, dict):
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body or "")
        return None, text.strip()[:_MAX_BODY_TEXT]
    error = body.get("error")
    code = body.get("error_code") or body.get("code")
    if isinstance(error, dict):  # Valsea style: {"error": {"code"|"type", "message"}}
        code = code or error.get("code") or error.get("type")
        text = error.get("message") or ""
    else:
        text = error or body.get("message") or body.get("detail") or ""
    if not isinstance(text, str):
        text = str(text)
    return (str(code) if code is not None else None), text


def error_from_response(
    status: int,
    body: Any,
    headers: Mapping[str, str] | None = None,
    *,
    provider: str,
    request_id: str | None = None,
    job_id: str | None = None,
    now_wall: float | None = None,
) -> ValenceSDKException:
    """The one mapping from an HTTP error answer to a typed exception.

    `body` is the decoded JSON (a dict) when the answer was JSON, else its text.
    """
    code, text = _body_fields(body)
    if isinstance(body, dict):
        request_id = request_id or body.get("request_id")
        job_id = job_id or body.get("job_id")
    request_id = request_id or header(headers, "X-Request-Id")
    label = f"{provider}: HTTP {status}" + (f" {code}" if code else "")
    message = f"{label}: {text}" if text else label
    fields: dict[str, Any] = {
        "status": status,
        "error_code": code,
        "request_id": request_id,
        "job_id": job_id,
        "provider": provider,
        "body": body,
        "headers": headers,
    }
    extra = body if isinstance(body, dict) else {}
    hint = retry_after(headers, time.time() if now_wall is None else now_wall, rate_limited=status == 429)

    if status == 400 and code == "AUDIO_TOO_SHORT":
        return AudioTooShortError(
            message,
            min_duration=extra.get("min_duration_seconds"),
            actual_duration=extra.get("actual_duration_seconds"),
            **fields,
        )
    if status == 400 and code in {"AUDIO_TOO_LONG", "FILE_TOO_LARGE"}:
        return AudioTooLongError(
            message,
            max_duration=extra.get("max_duration_seconds"),
            actual_duration=extra.get("actual_duration_seconds"),
            **fields,
        )
    if status == 413:
        return FileSizeLimitExceededError(
            message,
            max_size_mb=extra.get("max_size_mb"),
            actual_size_mb=extra.get("actual_size_mb"),
            **fields,
        )
    if status in {401, 403}:
        return AuthenticationError(message, **fields)
    if status == 402:
        return InsufficientCreditsError(message, **fields)
    if status in {404, 410}:
        return NotFoundError(message, **fields)
    if status == 409:
        return JobNotReadyError(message, retry_after=hint, **fields)
    if status == 429:
        return RateLimitError(message, retry_after=hint, **fields)
    if status >= 500:
        return ServerError(message, **fields)
    if 400 <= status < 500:
        return InvalidRequestError(message, **fields)
    return ValenceSDKException(message, **fields)
