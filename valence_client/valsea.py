"""`ValseaClient`: the Valsea prosody API (job based, Bearer auth).

submit → `ProsodyJob` (202, queued); `status`; `result` → `ProsodyResult` (409 until completed
→ `JobNotReadyError`); `wait` polls with a growing, capped interval and a deadline.

The upload is a streamed multipart body (`requests_toolbelt.MultipartEncoder`): the file is read
in small blocks while the socket sends, so a 1 GB recording never sits in memory.
"""

from __future__ import annotations

import io
import mimetypes
import os
import random
import time
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import requests
from requests_toolbelt import MultipartEncoder

from valence_client._common import build_transport, parse, resolve_key
from valence_client._headers import seconds_until
from valence_client._logging import get_logger
from valence_client.errors import InvalidInputError, PredictionError, UploadError
from valence_client.limiter import RateLimiter
from valence_client.models import ProsodyJob, ProsodyResult, prosody_object_hook
from valence_client.polling import Poll, PollPolicy, wait_for_job
from valence_client.transport import ProviderClient, RetryPolicy, Timeout, Transport, json_body
from valence_client.upload import Readable, UploadSource, open_source

if TYPE_CHECKING:
    from pydantic import SecretStr


logger = get_logger(__name__)

PROVIDER = "valsea"
DEFAULT_BASE_URL = "https://api.valsea.ai"
MODEL = "valsea-prosody"
GRANULARITIES = ("word", "sentence", "utterance")
RESPONSE_FORMATS = ("json", "verbose_json")
_CONTENT_TYPES = {
    ".wav": "audio/wav",
    ".mp3": "audio/mpeg",
    ".ogg": "audio/ogg",
    ".flac": "audio/flac",
    ".webm": "audio/webm",
}


class _SizedReader:
    """A stream with a `len` of what is left to read: what MultipartEncoder needs to compute
    Content-Length without reading (works for S3 bodies and our generated WAV streams)."""

    def __init__(self, stream: Readable, size: int) -> None:
        self._stream = stream
        self._left = size

    @property
    def len(self) -> int:
        return self._left

    def read(self, size: int = -1) -> bytes:
        want = self._left if size is None or size < 0 else min(size, self._left)
        if want <= 0:
            return b""
        chunk = self._stream.read(want)
        self._left -= len(chunk)
        return chunk


class _Body:
    """Builds a fresh streamed multipart body per attempt when the source can be re-read."""

    def __init__(
        self, source: Any, fields: dict[str, str], *, size: int | None, file_name: str | None
    ) -> None:
        self._source = source
        self._fields = fields
        self._boundary = uuid.uuid4().hex
        self._opened: list[UploadSource] = []
        first = self._open(size, file_name)
        self.name, self.size = first.name, first.size
        self._start = _tell(first.stream)
        self.replayable = isinstance(source, str | os.PathLike) or self._start is not None
        self._pending: UploadSource | None = first
        self._reader: _SizedReader | None = None

    def _open(self, size: int | None, file_name: str | None) -> UploadSource:
        src = open_source(self._source, size=size, file_name=file_name)
        self._opened.append(src)
        return src

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self._boundary}"

    def __call__(self) -> MultipartEncoder:
        reader = _SizedReader(self._next_source().stream, self.size)
        self._reader = reader
        kind = _CONTENT_TYPES.get(os.path.splitext(self.name)[1].lower()) or (
            mimetypes.guess_type(self.name)[0] or "application/octet-stream"
        )
        fields: dict[str, Any] = {**self._fields, "file": (self.name, reader, kind)}
        return MultipartEncoder(fields=fields, boundary=self._boundary)

    def _next_source(self) -> UploadSource:
        """The source for this attempt: fresh for the first, reopened or rewound after that."""
        src, self._pending = self._pending, None
        if src is not None:
            return src
        if isinstance(self._source, str | os.PathLike):
            return self._open(None, self.name)
        src = self._opened[0]
        if self._start is not None:
            src.stream.seek(self._start)  # type: ignore[attr-defined]  # a position => seekable
            return src
        if self._reader is not None and self._reader.len == self.size:
            return src  # a one-way stream the failed attempt never read (connection refused)
        raise UploadError(
            "cannot resend a one-way stream that was partly sent", provider=PROVIDER, retryable=True
        )

    def close(self) -> None:
        for src in self._opened:
            src.close()


def _tell(stream: Any) -> int | None:
    """The stream's position if it can seek back there, else None."""
    try:
        if stream.seekable():
            return int(stream.tell())
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        pass
    return None


class ValseaClient(ProviderClient):
    """One client per Valsea account. Options mirror `ValenceClient`'s keyword options."""

    def __init__(
        self,
        api_key: str | SecretStr | None = None,
        base_url: str | None = None,
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
    ) -> None:
        self._api_key = resolve_key(api_key, "VALSEA_API_KEY", PROVIDER)
        self.base_url = (base_url or os.environ.get("VALSEA_API_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.transport = build_transport(
            provider=PROVIDER,
            base_url=self.base_url,
            key=self._api_key,
            auth_headers={"Authorization": f"Bearer {self._api_key}"},
            transport=transport,
            session=session,
            limiter=limiter,
            rate_limits=rate_limits,
            timeout=timeout,
            max_retries=max_retries,
            retry=retry,
            sleep=sleep,
            rng=rng,
            pool_size=10,
        )
        self._sleep = sleep if sleep is not None else time.sleep
        self._clock = clock if clock is not None else time.monotonic

    def submit(
        self,
        file: str | os.PathLike[str] | Any,
        language: str | None = None,
        granularity: str = "utterance",
        response_format: str = "json",
        *,
        size: int | None = None,
        file_name: str | None = None,
        idempotency_key: str | None = None,
    ) -> ProsodyJob:
        """Queue a prosody job for a path or a binary stream (pass `size=` if it has no known
        length). Not retried after the body was sent (it would start a second, billed job);
        store the returned `job_id` before waiting."""
        if granularity not in GRANULARITIES:
            raise InvalidInputError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
        if response_format not in RESPONSE_FORMATS:
            raise InvalidInputError(
                f"response_format must be one of {RESPONSE_FORMATS}, got {response_format!r}"
            )
        fields = {"model": MODEL, "granularity": granularity, "response_format": response_format}
        if language:
            fields["language"] = language
        body = _Body(file, fields, size=size, file_name=file_name)
        try:
            logger.info(
                "valsea submit %s (%d bytes, %s, %s)", body.name, body.size, granularity, response_format
            )
            answer = self.transport.request_json(
                "POST",
                "/v1/prosody",
                data=body,
                headers={"Content-Type": body.content_type},
                idempotent=False,
                idempotency_key=idempotency_key,
                replayable=body.replayable,
                timeout=self._submit_timeout(body.size),
            )
        finally:
            body.close()
        job = parse(ProsodyJob, answer, provider=PROVIDER, what="submit")
        logger.info("valsea job %s %s", job.job_id, job.status)
        return job

    def _submit_timeout(self, size: int) -> Any:
        """The answer to a submit comes after the server has taken the whole body in: allow
        it time in proportion to the size (a second per 8 MiB), so a large file's slow answer
        is not mistaken for a lost one (whose outcome, unlike a refused call, is unknown)."""
        timeout = self.transport.timeout
        connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        if read is None:
            return timeout
        return (connect, read + size / (8 * 1024 * 1024))

    def status(self, job_id: str) -> ProsodyJob:
        """One look at the job (`queued`, `in_progress`, `completed` or `failed`)."""
        return self._status(job_id)[0]

    def _status(self, job_id: str) -> tuple[ProsodyJob, float | None]:
        response = self.transport.request("GET", f"/v1/prosody/{job_id}", job_id=job_id)
        body = json_body(response, PROVIDER)
        if isinstance(body, dict):
            body.setdefault("job_id", job_id)
        job = parse(ProsodyJob, body, provider=PROVIDER, what="status", job_id=job_id)
        return job, seconds_until(response.headers.get("Retry-After"), time.time())

    def result(self, job_id: str) -> ProsodyResult:
        """The scores of a completed job; `JobNotReadyError` (409) before that."""
        response = self.transport.request("GET", f"/v1/prosody/{job_id}/result", job_id=job_id)
        body = json_body(response, PROVIDER, object_hook=prosody_object_hook)
        return parse(ProsodyResult, body, provider=PROVIDER, what="result", job_id=job_id)

    def wait(
        self,
        job_id: str,
        *,
        initial_interval_s: float = 2.0,
        max_interval_s: float = 30.0,
        deadline_s: float | None = 900.0,
    ) -> ProsodyResult:
        """Poll until completed and return the result; `PredictionError` on `failed` or when
        the deadline passes (then `retryable=True`: the job may still finish)."""
        policy = PollPolicy(initial_interval_s, max_interval_s, deadline_s=deadline_s)
        return wait_for_job(
            lambda: self._poll(job_id),
            policy=policy,
            job=job_id,
            provider=PROVIDER,
            sleep=self._sleep,
            clock=self._clock,
        )

    def _poll(self, job_id: str) -> Poll[ProsodyResult]:
        job, hint = self._status(job_id)
        if job.status == "failed":
            raise PredictionError(
                f"valsea job {job_id} failed", job_id=job_id, provider=PROVIDER, body=job.model_dump()
            )
        if job.status != "completed":
            return Poll(done=False, state=job.status, retry_after=hint)
        return Poll(done=True, value=self.result(job_id), state=job.status)
