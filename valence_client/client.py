"""`ValenceClient`: the public `valenceai` SDK's surface over our transport.

Code written for `valenceai.ValenceClient` keeps working: same constructor arguments, same
`discrete`, `asynch`, `rate_limit` and `streaming` namespaces and method names, same exception
names. What changes: answers are typed models (`DiscreteResult`, `AsyncStatus`, ...) instead of
dicts, every call has a timeout, retries and pacing, uploads stream in bounded memory, and a
stream reconnects by itself with a bounded send queue (`valence_client.streaming`).
"""

from __future__ import annotations

import mimetypes
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import requests

from valence_client._common import build_transport, parse, resolve_key
from valence_client._headers import seconds_until
from valence_client._logging import get_logger
from valence_client.errors import (
    FileSizeLimitExceededError,
    InvalidInputError,
    PredictionError,
)
from valence_client.limiter import WINDOW_SECONDS, RateLimiter, UsageAware
from valence_client.models import (
    VALENCE_MODELS,
    AsyncStatus,
    DiscreteResult,
    EmotionSegment,
    HealthStatus,
    RateLimitStatus,
)
from valence_client.polling import Poll, PollPolicy, wait_for_job
from valence_client.streaming import StreamingAPI
from valence_client.transport import ProviderClient, RetryPolicy, Timeout, Transport, json_body
from valence_client.upload import (
    MAX_BUDGET_THREADS,
    MiB,
    MultipartUploader,
    PartSizeAdjuster,
    ProgressCallback,
    check_audio_file,
    read_exactly,
)

if TYPE_CHECKING:
    from pydantic import SecretStr


logger = get_logger(__name__)

PROVIDER = "valence"
DEFAULT_BASE_URL = "https://api.getvalenceai.com"
DEFAULT_WEBSOCKET_URL = "wss://api.getvalenceai.com"
DISCRETE_MAX_MB = 6.0
PENDING_STATES = ("initiated", "upload_completed", "processing")


def _check_model(model: str) -> None:
    if model not in VALENCE_MODELS:
        raise InvalidInputError(f"unknown model {model!r}; expected one of {sorted(VALENCE_MODELS)}")


def _samples(audio_array: Iterable[Any]) -> list[float]:
    try:
        samples = [float(x) for x in audio_array]
    except (TypeError, ValueError) as exc:
        raise InvalidInputError("audio_array must be a flat sequence of numbers") from exc
    if not samples:
        raise InvalidInputError("audio_array is empty")
    return samples


class DiscreteAPI:
    """Short clips (4-10 s, at most 6 MB): one call, one answer."""

    PATH = "/v1/discrete/emotion"

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    def emotions(
        self,
        file_path: str | os.PathLike[str] | None = None,
        audio_array: Iterable[float] | None = None,
        model: str = "4emotions",
        *,
        file: BinaryIO | None = None,
        file_name: str | None = None,
    ) -> DiscreteResult:
        """Emotion of a short clip, from a file path, an open binary stream (`file=`) or raw
        samples: exactly one of them.

        Raises `ValueError` subclasses for bad arguments (before any HTTP call),
        `FileSizeLimitExceededError` above 6 MB, `AudioTooShortError`/`AudioTooLongError` when
        the API rejects the duration.
        """
        has_path = file_path is not None and os.fspath(file_path) != ""
        given = sum((has_path, audio_array is not None, file is not None))
        if given > 1:
            raise InvalidInputError("Provide either file_path or audio_array, not both")
        if given == 0:
            raise InvalidInputError("Must provide either file_path or audio_array")
        _check_model(model)
        if file_path is not None and has_path:
            path = Path(file_path)
            self._check_size(check_audio_file(path))
            return self._send_file(file_name or path.name, path.read_bytes(), model)
        if file is not None:
            name = file_name or os.path.basename(str(getattr(file, "name", "") or "")) or "audio.wav"
            return self._send_file(name, self._read_stream(file), model)
        assert audio_array is not None
        return self._from_samples(audio_array, model)

    @staticmethod
    def _check_size(size: int) -> None:
        size_mb = size / MiB
        if size_mb > DISCRETE_MAX_MB:
            raise FileSizeLimitExceededError(
                f"File size ({size_mb:.2f} MB) exceeds discrete API maximum ({DISCRETE_MAX_MB} MB)",
                max_size_mb=DISCRETE_MAX_MB,
                actual_size_mb=size_mb,
                provider=PROVIDER,
            )

    def _read_stream(self, file: BinaryIO) -> bytes:
        # One byte past the limit is enough to know it is too big, without reading it all.
        data = read_exactly(file, int(DISCRETE_MAX_MB * MiB) + 1)
        if not data:
            raise InvalidInputError("the audio stream is empty")
        self._check_size(len(data))
        return data

    def _send_file(self, name: str, data: bytes, model: str) -> DiscreteResult:
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        # At most 6 MB, so holding it lets every retry resend the same bytes.
        files = {"file": (name, data, content_type)}
        logger.info("discrete emotions for %s (model=%s)", name, model)
        body = self._transport.request_json(
            "POST", self.PATH, params={"model": model}, files=files, idempotent=True, billed=True
        )
        return parse(DiscreteResult, body, provider=PROVIDER, what="discrete")

    def _from_samples(self, audio_array: Iterable[float], model: str) -> DiscreteResult:
        payload = {"payload": [_samples(audio_array)]}
        logger.info("discrete emotions for %d samples (model=%s)", len(payload["payload"][0]), model)
        body = self._transport.request_json(
            "POST", self.PATH, params={"model": model}, json=payload, idempotent=True, billed=True
        )
        return parse(DiscreteResult, body, provider=PROVIDER, what="discrete")


class AsyncAPI:
    """Long audio (at least 5 s, at most 1 GB): upload, then poll for the timeline."""

    STATUS_PATH = "/v1/asynch/emotion/status/{request_id}"

    def __init__(
        self,
        transport: Transport,
        uploader: MultipartUploader,
        *,
        comprehensive_output: bool = False,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._transport = transport
        self.uploader = uploader
        self.comprehensive_output = comprehensive_output
        self._sleep = sleep
        self._clock = clock

    # SDK attribute names, kept settable.
    @property
    def part_size(self) -> int:
        return self.uploader.part_size

    @part_size.setter
    def part_size(self, value: int) -> None:
        self.uploader.part_size = value

    @property
    def max_threads(self) -> int:
        return self.uploader.max_threads

    @property
    def show_progress(self) -> bool:
        return self.uploader.show_progress

    def upload(
        self,
        file_path: str | os.PathLike[str] | Any,
        *,
        size: int | None = None,
        file_name: str | None = None,
        on_initiated: Callable[[str], None] | None = None,
        progress: ProgressCallback | None = None,
    ) -> str:
        """Multipart-upload a local path, an open binary stream or any readable with a known
        size (e.g. an S3 `StreamingBody`, with `size=ContentLength`); returns the request id.

        `on_initiated(request_id)` runs as soon as the API has assigned the id, before the
        parts go up, so a caller can persist it and resume polling after a crash.
        """
        outcome = self.uploader.upload(
            file_path, size=size, file_name=file_name, on_initiated=on_initiated, progress=progress
        )
        return outcome.request_id

    def status(self, request_id: str) -> AsyncStatus:
        """One look at the job, without waiting (404 once the result has expired)."""
        return self._status(request_id)[0]

    def _status(self, request_id: str) -> tuple[AsyncStatus, float | None]:
        params = {"comprehensive_output": "true"} if self.comprehensive_output else None
        response = self._transport.request(
            "GET", self.STATUS_PATH.format(request_id=request_id), params=params, request_id=request_id
        )
        body = json_body(response, PROVIDER)
        if isinstance(body, dict):
            body.setdefault("request_id", request_id)
        status = parse(AsyncStatus, body, provider=PROVIDER, what="status", request_id=request_id)
        return status, seconds_until(response.headers.get("Retry-After"), time.time())

    def _poll(self, request_id: str) -> Poll[AsyncStatus]:
        status, hint = self._status(request_id)
        if status.status == "failed":
            raise PredictionError(
                f"Request {request_id} failed during processing",
                request_id=request_id,
                provider=PROVIDER,
                body=status.model_dump(),
            )
        return Poll(done=status.status == "completed", value=status, state=status.status, retry_after=hint)

    def emotions(self, request_id: str, max_attempts: int = 20, interval_seconds: float = 5) -> AsyncStatus:
        """The SDK's poll: up to `max_attempts` looks, `interval_seconds` apart (it looks first,
        then waits). Raises `PredictionError` on `failed` or when attempts run out."""
        policy = PollPolicy(
            initial_interval_s=interval_seconds,
            max_interval_s=interval_seconds,
            growth=1.0,
            deadline_s=None,
            max_attempts=max(1, max_attempts),
        )
        return self._wait(request_id, policy)

    def wait(
        self,
        request_id: str,
        *,
        initial_interval_s: float = 10.0,
        max_interval_s: float = 60.0,
        deadline_s: float | None = 6 * 3600.0,
    ) -> AsyncStatus:
        """Poll with a growing interval (capped) until completed, honouring `Retry-After`.

        The server batches uploads about every 10 s and needs 1-2 min per hour of audio.
        """
        policy = PollPolicy(initial_interval_s, max_interval_s, deadline_s=deadline_s)
        return self._wait(request_id, policy)

    def _wait(self, request_id: str, policy: PollPolicy) -> AsyncStatus:
        result = wait_for_job(
            lambda: self._poll(request_id),
            policy=policy,
            job=request_id,
            provider=PROVIDER,
            sleep=self._sleep,
            clock=self._clock,
        )
        logger.info("emotions retrieved for request %s", request_id)
        return result

    # ------------------------------------------------------------ timeline helpers (SDK)

    def _timeline_of(self, job: str | AsyncStatus) -> list[EmotionSegment]:
        status = job if isinstance(job, AsyncStatus) else self.emotions(job, max_attempts=1)
        return list(status.emotions)

    def get_timeline(self, request_id: str | AsyncStatus) -> list[EmotionSegment]:
        """The completed job's segments (pass an `AsyncStatus` to skip the request)."""
        return self._timeline_of(request_id)

    def get_emotion_at_time(
        self, request_id: str | AsyncStatus, time_seconds: float
    ) -> EmotionSegment | None:
        for segment in self._timeline_of(request_id):
            if segment.start_s <= time_seconds < segment.end_s:
                return segment
        return None

    def emotion_counts(self, request_id: str | AsyncStatus) -> dict[str, int]:
        return dict(Counter(segment.emotion for segment in self._timeline_of(request_id)))

    def get_dominant_emotion(self, request_id: str | AsyncStatus) -> str | None:
        """The emotion of the most segments (ties: the one seen first)."""
        counts = self.emotion_counts(request_id)
        return max(counts, key=counts.__getitem__) if counts else None

    def majority_emotion(self, request_id: str | AsyncStatus) -> str | None:
        """Alias of `get_dominant_emotion` (SDK name)."""
        return self.get_dominant_emotion(request_id)


class RateLimitAPI:
    """`/v1/rate-limit/*`, plus `sync_limiter` to seed the client-side limiter from the server."""

    def __init__(
        self,
        transport: Transport,
        limiter: RateLimiter | None,
        on_status: Callable[[RateLimitStatus], None] | None = None,
    ) -> None:
        self._transport = transport
        self._limiter = limiter
        self._on_status = on_status

    def get_status(self) -> RateLimitStatus:
        body = self._transport.request_json("GET", "/v1/rate-limit/status")
        status = parse(RateLimitStatus, body, provider=PROVIDER, what="rate-limit status")
        if self._on_status is not None:
            self._on_status(status)
        return status

    def get_health(self) -> HealthStatus:
        body = self._transport.request_json("GET", "/v1/rate-limit/health")
        return parse(HealthStatus, body, provider=PROVIDER, what="rate-limit health")

    def sync_limiter(self) -> RateLimitStatus:
        """Fetch the server's limits and usage and apply them to the client-side limiter."""
        status = self.get_status()
        if self._limiter is None:
            return status
        limits = {name: w.limit for name, w in status.limits.items() if name in WINDOW_SECONDS}
        if limits:
            self._limiter.configure(limits)
        if isinstance(self._limiter, UsageAware):
            now = time.time()
            for name, window in status.limits.items():
                if name in WINDOW_SECONDS:
                    reset = seconds_until(window.reset, now) if window.reset is not None else None
                    self._limiter.observe(name, window.remaining, reset)
        logger.info("rate limiter synced from server: %s", limits)
        return status


class ValenceClient(ProviderClient):
    """Main client, with the SDK's nested `discrete`, `asynch`, `rate_limit` and `streaming`
    clients.

    Keyword-only options beyond the SDK: `timeout` (seconds, or (connect, read)), `max_retries`
    (transport retries per call), `limiter` (defaults to a process-wide one per account),
    `rate_limits` (its window limits), `transport` or `session` (bring your own), `retry`,
    `sleep`/`clock`/`rng` (pinned by tests), `max_upload_mb`.
    """

    def __init__(
        self,
        api_key: str | SecretStr | None = None,
        base_url: str | None = None,
        websocket_url: str | None = None,
        part_size: int = 5 * MiB,
        show_progress: bool = True,
        max_threads: int = 3,
        comprehensive_output: bool = False,
        *,
        timeout: Timeout = 30.0,
        max_retries: int = 3,
        limiter: RateLimiter | None = None,
        rate_limits: Mapping[str, int] | None = None,
        transport: Transport | None = None,
        session: requests.Session | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] | None = None,
        clock: Callable[[], float] | None = None,
        rng: random.Random | None = None,
        max_upload_mb: float = 1024.0,
        part_size_adjuster: PartSizeAdjuster | None = None,
        memory_budget_mb: float | None = None,
        check_part_etags: bool | None = None,
    ) -> None:
        self._api_key = resolve_key(api_key, "VALENCE_API_KEY", PROVIDER)
        self.base_url = (base_url or os.environ.get("VALENCE_API_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.websocket_url = websocket_url or os.environ.get("VALENCE_WEBSOCKET_URL") or DEFAULT_WEBSOCKET_URL
        self.transport = build_transport(
            provider=PROVIDER,
            base_url=self.base_url,
            key=self._api_key,
            auth_headers={"x-api-key": self._api_key},
            transport=transport,
            session=session,
            limiter=limiter,
            rate_limits=rate_limits,
            timeout=timeout,
            max_retries=max_retries,
            retry=retry,
            sleep=sleep,
            rng=rng,
            pool_size=max(10, max_threads + 2, MAX_BUDGET_THREADS + 2),
        )
        self.uploader = MultipartUploader(
            self.transport,
            part_size=part_size,
            max_threads=max_threads,
            show_progress=show_progress,
            adjuster=part_size_adjuster,
            max_upload_bytes=int(max_upload_mb * MiB),
            memory_budget=None if memory_budget_mb is None else int(memory_budget_mb * MiB),
            check_etags=check_part_etags,
        )
        self.discrete = DiscreteAPI(self.transport)
        self.asynch = AsyncAPI(
            self.transport,
            self.uploader,
            comprehensive_output=comprehensive_output,
            sleep=sleep if sleep is not None else time.sleep,
            clock=clock if clock is not None else time.monotonic,
        )
        self.rate_limit = RateLimitAPI(self.transport, self.transport.limiter, self._learn_limits)
        # Same limiter: a stream's connection counts against the account's request budget.
        self.streaming = StreamingAPI(self._api_key, self.websocket_url, limiter=self.transport.limiter)

    @property
    def api_key(self) -> str:
        """The key in use (SDK attribute). Never part of `repr`."""
        return self._api_key

    def _learn_limits(self, status: RateLimitStatus) -> None:
        if status.max_audio_size_mb is not None:
            self.uploader.max_upload_bytes = int(status.max_audio_size_mb * MiB)
