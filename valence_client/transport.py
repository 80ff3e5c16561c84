"""The only sender: one pooled `requests.Session`, a timeout on every call, one retry loop.

Both providers' clients go through `Transport.request`. Resource code names a method, a path
and what to parse; it never touches `requests`.

Retry rule (what is safe to send twice):

1. Budget: at most `max_retries` retries after the first attempt.
2. The error must be `retryable` (connection failures, 429, 5xx); 4xx never are, including 402
   and Valsea's 409 "not ready" (the wait loop polls for that, not the transport).
3. A connection failure *before the request was sent* (refused, connect timeout) is always
   retried: the server never saw it.
4. 429 is always retried: the server refused before doing any work.
5. Other failures (5xx, dropped or timed-out answers) are retried only for calls that are safe
   to repeat: GET/HEAD/PUT/DELETE/OPTIONS, plus POSTs the caller marks `idempotent=True`
   (Valence discrete analysis is a stateless computation; completing an upload with the same
   parts gives the same result). Creating POSTs (upload initiate, Valsea submit) are not.
   A call marked `billed=True` (discrete analysis: each call that is answered is paid) is
   resent after an answered 5xx (the provider failed before doing the work) but not after a
   lost answer: the call may have been done and paid, and the caller decides (the pipeline
   records it as unknown rather than pay twice).
6. A body that cannot be replayed (a plain stream) gets only rule 3.

Wait before a retry: the server's hint first (`Retry-After`, else `X-RateLimit-Reset` on a
429); if the hint is longer than `RetryPolicy.max_retry_after_s` we stop and raise the
`RateLimitError` (its `retry_after` tells the caller when to come back). Otherwise exponential
backoff, capped, jittered into the upper half and floored at the initial delay (`backoff` and
`jitter` are separate methods; sleep, wall clock and RNG are injectable).

POSTs carry one `Idempotency-Key` minted before the loop, so every attempt of one call shares it.

Redirects are refused, never followed: `requests` re-sends custom headers (our `x-api-key`) to
whatever host a `Location` names, so one compromised or misconfigured endpoint could collect the
key. A 3xx answer is a non-retryable `InvalidRequestError` naming only the target's origin.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import urlsplit

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter

from valence_client._headers import retry_after
from valence_client._logging import get_logger, protect_http_loggers
from valence_client.errors import (
    APIConnectionError,
    InvalidRequestError,
    RateLimitError,
    ServerError,
    ValenceSDKException,
    error_from_response,
)
from valence_client.limiter import RateLimiter
from valence_client.redaction import redact, redact_url, register_secret

logger = get_logger(__name__)
protect_http_loggers()

SAFE_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
USER_AGENT = "valence-pipeline-client/0.1"

Timeout = float | tuple[float, float]
BodyFactory = Callable[[], Any]


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff numbers. Seconds, not minutes: task-level retries handle long outages."""

    max_retries: int = 3
    initial_delay_s: float = 0.5
    max_delay_s: float = 20.0
    max_retry_after_s: float = 60.0


@dataclass
class TransportStats:
    """Counters for run summaries. `calls` counts every attempt sent, retries included."""

    calls: int = 0
    retries: int = 0
    rate_limited: int = 0
    server_errors: int = 0
    connection_errors: int = 0
    failures: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return {
                "calls": self.calls,
                "retries": self.retries,
                "rate_limited": self.rate_limited,
                "server_errors": self.server_errors,
                "connection_errors": self.connection_errors,
                "failures": self.failures,
            }


@dataclass(frozen=True)
class _Call:
    """One logical call: what every attempt needs, fixed before the loop."""

    method: str
    url: str
    safe: bool
    billed: bool
    replayable: bool
    authenticated: bool
    rate_limited: bool
    headers: dict[str, str]
    kwargs: dict[str, Any]
    data: Any
    timeout: Timeout
    request_id: str | None
    job_id: str | None


def failed_before_send(exc: BaseException) -> bool:
    """True when the connection could not be made at all, so the server saw nothing."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    if isinstance(exc, requests.exceptions.ConnectionError) and exc.args:
        reason = getattr(exc.args[0], "reason", exc.args[0])
        return isinstance(
            reason, urllib3.exceptions.NewConnectionError | urllib3.exceptions.ConnectTimeoutError
        )
    return False


def json_body(
    response: requests.Response, provider: str, object_hook: Callable[[dict[str, Any]], Any] | None = None
) -> Any:
    """The decoded JSON of a 2xx answer (None if empty); a non-JSON answer is a `ServerError`.
    `object_hook` is `json.loads`'s: it may turn objects into models as they are decoded."""
    if not response.content:
        return None
    try:
        return response.json(object_hook=object_hook)
    except ValueError as exc:
        raise ServerError(
            f"{provider}: {response.request.method} {redact_url(response.url)} answered "
            f"{response.status_code} with a non-JSON body",
            status=response.status_code,
            provider=provider,
            body=response.text,
        ) from exc


class Transport:
    """HTTP for one provider: base URL, auth headers, limiter, retries, counters."""

    def __init__(
        self,
        provider: str,
        base_url: str,
        *,
        auth_headers: Mapping[str, str] | None = None,
        timeout: Timeout = 30.0,
        retry: RetryPolicy | None = None,
        session: requests.Session | None = None,
        limiter: RateLimiter | None = None,
        sleep: Callable[[float], None] = time.sleep,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        pool_size: int = 10,
    ) -> None:
        self.provider = provider
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retry = retry if retry is not None else RetryPolicy()
        self.limiter = limiter
        self.stats = TransportStats()
        self._sleep = sleep
        self._wall_clock = wall_clock
        self._rng = rng if rng is not None else random.Random()
        self._auth_headers = dict(auth_headers or {})
        for value in self._auth_headers.values():
            register_secret(value)
            register_secret(value.removeprefix("Bearer "))
        self._owns_session = session is None
        self.session = session or self._new_session(pool_size)

    @staticmethod
    def _new_session(pool_size: int) -> requests.Session:
        session = requests.Session()
        # Retries are ours; urllib3 must not add a second loop.
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers["User-Agent"] = USER_AGENT
        return session

    def close(self) -> None:
        if self._owns_session:
            self.session.close()

    def __repr__(self) -> str:
        return f"Transport(provider={self.provider!r}, base_url={redact_url(self.base_url)!r})"

    # ------------------------------------------------------------------ public

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        data: Any = None,
        files: Any = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
        billed: bool = False,
        idempotency_key: str | None = None,
        replayable: bool | None = None,
        authenticated: bool = True,
        rate_limited: bool = True,
        timeout: Timeout | None = None,
        request_id: str | None = None,
        job_id: str | None = None,
    ) -> requests.Response:
        """Send with retries; return the 2xx response or raise the mapped error.

        `path` is relative to the base URL, or an absolute URL (presigned part URLs; send those
        with `authenticated=False` so the API key never leaves for the object store, and
        `rate_limited=False` since the store is not the API). `data` may be a zero-argument
        callable that builds a fresh body per attempt (streamed multipart bodies); pass
        `replayable=False` when it cannot (then only rule 3 of the module doc applies).
        """
        method = method.upper()
        call_headers = dict(headers or {})
        if method == "POST" and authenticated:
            call_headers.setdefault("Idempotency-Key", idempotency_key or uuid.uuid4().hex)
        kwargs = {k: v for k, v in {"params": params, "json": json, "files": files}.items() if v is not None}
        call = _Call(
            method=method,
            url=path if path.startswith(("http://", "https://")) else f"{self.base_url}{path}",
            safe=method in SAFE_METHODS if idempotent is None else idempotent,
            billed=billed,
            replayable=not hasattr(data, "read") if replayable is None else replayable,
            authenticated=authenticated,
            rate_limited=rate_limited,
            headers=call_headers,
            kwargs=kwargs,
            data=data,
            timeout=self.timeout if timeout is None else timeout,
            request_id=request_id,
            job_id=job_id,
        )
        return self._request_with_retries(call)

    def request_json(self, method: str, path: str, **options: Any) -> Any:
        """`request`, then the decoded JSON body (None for an empty body)."""
        return json_body(self.request(method, path, **options), self.provider)

    def backoff(self, attempt: int) -> float:
        """Delay before retry number `attempt + 1`: exponential, capped, jittered, floored."""
        delay = min(self.retry.max_delay_s, self.retry.initial_delay_s * (2**attempt))
        return max(self.retry.initial_delay_s, self.jitter(delay))

    def jitter(self, delay: float) -> float:
        """Randomise into the upper half, [delay/2, delay], so clients spread out."""
        return delay * (0.5 + 0.5 * self._rng.random())

    # ------------------------------------------------------------------ the loop

    def _request_with_retries(self, call: _Call) -> requests.Response:
        attempt = 0
        while True:
            outcome = self._attempt(call, attempt)
            if isinstance(outcome, requests.Response):
                return outcome
            error, before_send = outcome
            delay = self._retry_delay(call, error, attempt, before_send)
            if delay is None:
                self.stats.add(failures=1)
                # Not chained to the requests exception on purpose: its text holds the raw URL
                # (a presigned signature) and tracebacks printed outside our loggers show causes.
                raise error
            self.stats.add(retries=1)
            logger.warning(
                "%s %s %s failed (%s); retry %d/%d in %.2fs",
                self.provider,
                call.method,
                redact_url(call.url),
                _short(error),
                attempt + 1,
                self.retry.max_retries,
                delay,
            )
            self._sleep(delay)
            attempt += 1

    def _attempt(self, call: _Call, attempt: int) -> requests.Response | tuple[ValenceSDKException, bool]:
        """One send: the 2xx response, or (error, whether it failed before sending)."""
        if call.rate_limited and self.limiter is not None:
            self.limiter.acquire()
        headers = {**call.headers, **(self._auth_headers if call.authenticated else {})}
        data = call.data() if callable(call.data) else call.data
        self.stats.add(calls=1)
        started = time.monotonic()
        logger.debug(
            "%s -> %s %s (attempt %d)", self.provider, call.method, redact_url(call.url), attempt + 1
        )
        try:
            response = self.session.request(
                call.method,
                call.url,
                headers=headers,
                data=data,
                timeout=call.timeout,
                allow_redirects=False,  # module doc: a redirect would carry the key elsewhere
                **call.kwargs,
            )
        except requests.RequestException as exc:
            self.stats.add(connection_errors=1)
            before = failed_before_send(exc)
            message = (
                f"{self.provider}: {call.method} {redact_url(call.url)} failed: {type(exc).__name__}: {exc}"
            )
            error = APIConnectionError(
                message, provider=self.provider, request_id=call.request_id, job_id=call.job_id
            )
            error.may_have_arrived = not before
            return error, before
        logger.debug(
            "%s <- %d %s %s in %.3fs",
            self.provider,
            response.status_code,
            call.method,
            redact_url(call.url),
            time.monotonic() - started,
        )
        self._inform_limiter(call, response)
        if 300 <= response.status_code < 400:
            return self._refused_redirect(call, response), False
        if response.ok:
            return response
        return self._error_for(call, response), False

    def _refused_redirect(self, call: _Call, response: requests.Response) -> ValenceSDKException:
        # Only the origin of the target: a Location may itself be a presigned URL.
        target = urlsplit(response.headers.get("Location", ""))
        origin = f"{target.scheme}://{target.netloc}" if target.netloc else "the same host"
        return InvalidRequestError(
            f"{self.provider}: {call.method} {redact_url(call.url)} answered {response.status_code} "
            f"redirecting to {origin}; redirects are refused so credentials never follow them "
            "(check the configured base URL)",
            status=response.status_code,
            provider=self.provider,
            request_id=call.request_id,
            job_id=call.job_id,
            retryable=False,
        )

    def _inform_limiter(self, call: _Call, response: requests.Response) -> None:
        if not call.rate_limited or self.limiter is None:
            return
        headers = dict(response.headers)
        if response.status_code != 429:
            # Retry-After on anything but a 429 is not about the shared budget.
            headers = {k: v for k, v in headers.items() if k.lower() != "retry-after"}
        try:
            self.limiter.update_from_headers(headers)
        except Exception as exc:  # noqa: BLE001 - any limiter, any backend: the answer stands
            # The answer has arrived (and a billed call is paid for): a limiter that cannot
            # take the headers (a shared one whose database restarts) must not turn it into an
            # error, or the caller would send the call again and pay twice. The headers are
            # advice; the next answer carries them again.
            logger.warning(
                "%s: the limiter could not take the rate-limit headers of %s %s (%s: %s); the answer stands",
                self.provider,
                call.method,
                redact_url(call.url),
                type(exc).__name__,
                (str(exc).splitlines() or [""])[0][:200],  # its first line: no SQL, no params
            )

    def _error_for(self, call: _Call, response: requests.Response) -> ValenceSDKException:
        if response.status_code == 429:
            self.stats.add(rate_limited=1)
        elif response.status_code >= 500:
            self.stats.add(server_errors=1)
        body: Any
        try:
            body = response.json()
        except ValueError:
            body = response.text
        return error_from_response(
            response.status_code,
            body,
            response.headers,
            provider=self.provider,
            request_id=call.request_id,
            job_id=call.job_id,
            now_wall=self._wall_clock(),
        )

    def _retry_delay(
        self, call: _Call, error: ValenceSDKException, attempt: int, before_send: bool
    ) -> float | None:
        """Seconds to wait before the next attempt, or None to give up (rule in module doc)."""
        if attempt >= self.retry.max_retries or not error.retryable:
            return None
        if before_send:
            return self.backoff(attempt)
        if not call.replayable:
            return None
        if isinstance(error, RateLimitError):
            hint = error.retry_after
            if hint is None:
                hint = retry_after(error.headers, self._wall_clock(), rate_limited=True)
            if hint is not None and hint > self.retry.max_retry_after_s:
                return None
            return hint if hint is not None else self.backoff(attempt)
        if not call.safe:
            return None
        if call.billed and not isinstance(error, ServerError):  # rule 5: a lost answer may be paid
            return None
        hint = retry_after(error.headers, self._wall_clock()) if isinstance(error, ServerError) else None
        if hint is not None and hint <= self.retry.max_retry_after_s:
            return hint
        return self.backoff(attempt)


class ProviderClient:
    """What every provider client shares: it owns one transport, reports its counters and
    closes it (also as a context manager)."""

    transport: Transport
    base_url: str

    @property
    def stats(self) -> dict[str, int]:
        """Transport counters (calls, retries, 429s, ...) for run summaries."""
        return self.transport.stats.as_dict()

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"


def _short(error: ValenceSDKException) -> str:
    return redact(error.message)[:200]
