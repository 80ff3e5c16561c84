"""Valence async upload, s3transfer-style: initiate → parts → complete, in bounded memory.

Plan: `plan_upload` picks the part size and the number of parts in flight (from a memory
budget when one is given, else the SDK's `part_size` / `max_threads`), `PartSizeAdjuster`
clamps the part size to the store's limits; `initiate` returns the request id and one presigned
URL per part (the caller's `on_initiated` hook gets the request id at once, so it can be stored
before any part goes up); parts are read lazily and PUT in parallel; `complete` gets the ETags
sorted by PartNumber.

Two ways to read the parts:

- **Ranged** sources (a local path, read with `os.preadv` into one reused buffer per part in
  flight; anything with `iter_range(offset, length)`, such as the pipeline's `S3Stream`, where
  each part is its own resumable, pinned ranged GET): every part is read by its own worker and streamed straight
  into its PUT, chunk by chunk (the MD5 for the ETag check, where it applies, is computed on
  the way: see `checks_etags`), so reads
  overlap with each other and with the PUTs, as in s3transfer, and no part is ever held whole.
  A PUT the transport retries reads its range again.
- **One-way** streams (an open pipe, a `StreamingBody`, a WAV converted on the fly): read front
  to back, once, by the submitting thread, each part handed whole to a worker.

Memory is arithmetic. A part is read only once a slot of the bounded executor is free (the
semaphore is taken *before* reading), so

    ranged sources:    peak part memory <= threads * 2 * chunk      (chunk: 1 MiB local, 256 KiB S3)
    one-way streams:   peak part memory <= (threads + 1) * part_size   (+1: the part being read)

whatever the file size. With a budget `B` (`memory_budget=`, the pipeline's
`upload_memory_mb`), `plan_upload` picks, for one-way streams, `(threads + 1) * part_size <= B`
(at least one 5 MiB part per thread: a budget under `2 * 5 MiB` still gets one thread and 5 MiB
parts); for ranged sources, where the part size costs no memory, up to 4 threads
(`B / RANGED_THREAD_MEMORY`, at most `MAX_RANGED_THREADS`) and parts of about a quarter of the
file's share per thread (fewer requests, still enough parts to balance the threads), within
5 MiB..64 MiB. Never more threads than parts. 32 MiB and a 1 GiB file: ranged, 4 threads of
64 MiB parts; one-way, 5 threads of 5.3 MiB parts.

Part PUTs go through the transport (so they get its retries and timeouts) but without the API
key and outside the API's rate limiter: the URLs point at the object store. Presigned URLs are
only ever logged through `redact_url`. There is no abort endpoint in the API: an abandoned
upload simply never completes and the provider expires it.
"""

from __future__ import annotations

import functools
import hashlib
import io
import ipaddress
import math
import os
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

from tqdm import tqdm

from valence_client._logging import get_logger
from valence_client.errors import (
    FileSizeLimitExceededError,
    InvalidInputError,
    MissingFileError,
    UploadError,
    ValenceSDKException,
)
from valence_client.models import CompletedPart, InitiateResponse, PresignedPart
from valence_client.redaction import redact_url
from valence_client.transport import Timeout, Transport

logger = get_logger(__name__)
T = TypeVar("T")

MiB = 1024 * 1024
GiB = 1024 * MiB
MIN_PART_SIZE = 5 * MiB
"""S3's smallest part (every part but the last)."""
MAX_PART_SIZE = 5 * GiB
MAX_PARTS = 10_000
MAX_UPLOAD_BYTES = 1 * GiB
"""The documented async input limit; replaced by `max_audio_size_mb` when the API reports it."""

INITIATE_PATH = "/v1/asynch/emotion/upload/initiate"
COMPLETE_PATH = "/v1/asynch/emotion/upload/complete"

_MD5_ETAG = re.compile(r"^[0-9a-f]{32}$")


class Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


@dataclass(frozen=True)
class PartSizeAdjuster:
    """The one owner of the part limits: clamp to [min_size, max_size], then double until the
    file fits in `max_parts` parts."""

    min_size: int = MIN_PART_SIZE
    max_size: int = MAX_PART_SIZE
    max_parts: int = MAX_PARTS

    def adjust(self, part_size: int, file_size: int) -> int:
        size = min(max(int(part_size), self.min_size), self.max_size)
        while size < self.max_size and math.ceil(file_size / size) > self.max_parts:
            size = min(size * 2, self.max_size)
        if math.ceil(file_size / size) > self.max_parts:
            raise InvalidInputError(
                f"{file_size} bytes cannot be uploaded in {self.max_parts} parts of at most {self.max_size} bytes"
            )
        return size

    @staticmethod
    def part_count(part_size: int, file_size: int) -> int:
        return max(1, math.ceil(file_size / part_size))


MAX_BUDGET_THREADS = 8
"""Most parts in flight that a budget buys: past this, two cores gain nothing but contention."""
MAX_RANGED_THREADS = 4
"""Most streamed parts in flight. Each one is a read and a PUT running at once; measured on 2
cores with the store beside the client (bench/bench_upload.py, 1 GiB streamed from S3), 8 made
the store spend 12-14 CPU s per GiB against 10-10.5 with 4, and the upload slower; over a
40 ms link 4 kept up with 8 (1.07x the SDK against 1.04x)."""
RANGED_THREAD_MEMORY = 2 * MiB
"""What one streaming part costs, generously: its chunk in flight, the next one, socket buffers."""
MAX_RANGED_PART = 64 * MiB
LOCAL_CHUNK = 1 * MiB


def plan_upload(
    file_size: int,
    *,
    memory_budget: int | None,
    part_size: int,
    max_threads: int,
    adjuster: PartSizeAdjuster,
    ranged: bool = False,
) -> tuple[int, int]:
    """(part_size, threads) for one upload; see the module docstring for the memory formula."""
    if memory_budget is None:
        size = adjuster.adjust(part_size, file_size)
        return size, max_threads
    if ranged:
        threads = max(1, min(MAX_RANGED_THREADS, memory_budget // RANGED_THREAD_MEMORY))
        size = min(MAX_RANGED_PART, max(adjuster.min_size, math.ceil(file_size / (threads * 4))))
        size = adjuster.adjust(size, file_size)
        return size, min(threads, adjuster.part_count(size, file_size))
    threads = max(1, min(MAX_BUDGET_THREADS, memory_budget // adjuster.min_size - 1))
    size = max(adjuster.min_size, memory_budget // (threads + 1))
    # A small file: no more threads than parts, and parts no bigger than needed to keep them busy.
    size = min(size, max(adjuster.min_size, math.ceil(file_size / threads)))
    size = adjuster.adjust(size, file_size)
    threads = min(threads, adjuster.part_count(size, file_size))
    return size, threads


class RangeReadable(Protocol):
    """A source whose parts can be read independently (and concurrently), chunk by chunk.

    A chunk may be a view of a buffer that the next chunk overwrites: use it (hash it, send
    it) before asking for the next."""

    def iter_range(self, offset: int, length: int, /) -> Iterator[bytes | memoryview]: ...


class _LocalRanges:
    """Parts of an open local file by `os.preadv`: no shared file position, so threads can
    read their parts at the same time.

    Each pass over a range reads into one buffer of `LOCAL_CHUNK` bytes, reused for every
    chunk (no allocation or page faults per chunk), and yields views of it: a view is valid
    only until the next chunk is asked for. The PUT's body is consumed that way (each chunk is
    hashed, then written to the socket, before the next is read)."""

    def __init__(self, fileno: int) -> None:
        self._fd = fileno

    def iter_range(self, offset: int, length: int) -> Iterator[memoryview]:
        end = offset + length
        buffer = memoryview(bytearray(min(LOCAL_CHUNK, length)))
        while offset < end:
            count = os.preadv(self._fd, [buffer[: min(len(buffer), end - offset)]], offset)
            if not count:
                return
            offset += count
            yield buffer[:count]


class _PartBody:
    """One part streamed from a ranged source into its PUT. It has a length (so `requests`
    sends a Content-Length, which presigned S3 PUTs require, instead of chunked encoding) and
    is iterated once per attempt; with `hashed`, the MD5 of what was sent is kept for the
    ETag check."""

    def __init__(
        self,
        ranges: RangeReadable,
        offset: int,
        length: int,
        ended_early: Callable[[int], Exception],
        hashed: bool = True,
    ) -> None:
        self._ranges = ranges
        self._ended_early = ended_early
        self._offset = offset
        self._length = length
        self.md5 = hashlib.md5(usedforsecurity=False) if hashed else None
        self.sent = 0

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[bytes | memoryview]:
        for chunk in self._ranges.iter_range(self._offset, self._length):
            if self.md5 is not None:
                self.md5.update(chunk)
            self.sent += len(chunk)
            yield chunk
        if self.sent != self._length:  # raised mid-request: the store never gets a short part
            raise self._ended_early(self._offset + self.sent)


@dataclass
class UploadSource:
    """A readable, its exact size and the file name to announce."""

    stream: Readable
    size: int
    name: str
    owned: bool = False
    ranges: RangeReadable | None = None
    """Set when parts can be read independently (a local file, an S3 object)."""

    def close(self) -> None:
        if self.owned and isinstance(self.stream, io.IOBase):
            self.stream.close()


def check_audio_file(file_path: str | os.PathLike[str]) -> int:
    """Size of an existing, non-empty file, or a typed input error (no HTTP call made)."""
    path = Path(file_path)
    if not path.is_file():
        raise MissingFileError(f"audio file not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise InvalidInputError(f"audio file is empty: {path}")
    return size


def open_source(source: Any, *, size: int | None = None, file_name: str | None = None) -> UploadSource:
    """Accept a path, an open binary stream, or any readable whose size is known.

    For streams the size comes from, in order: `size=`, a `size` or `_content_length` attribute
    (our WAV streams, botocore's StreamingBody), `len`, the file descriptor, or seeking.
    """
    if isinstance(source, str | os.PathLike):
        file_size = check_audio_file(source)
        name = file_name or os.path.basename(os.fspath(source))
        stream = open(source, "rb")
        return UploadSource(stream, file_size, name, owned=True, ranges=_LocalRanges(stream.fileno()))
    if not hasattr(source, "read"):
        raise InvalidInputError(f"cannot upload a {type(source).__name__}: pass a path or a binary stream")
    known = size if size is not None else _stream_size(source)
    if known is None:
        raise InvalidInputError("the stream's size is unknown: pass size=")
    if known <= 0:
        raise InvalidInputError("the audio stream is empty")
    name = file_name or os.path.basename(str(getattr(source, "name", "") or "")) or "audio.wav"
    ranges = source if callable(getattr(source, "iter_range", None)) else None
    return UploadSource(source, int(known), name, ranges=ranges)


def _stream_size(stream: Any) -> int | None:
    for attr in ("size", "_content_length", "len"):
        value = getattr(stream, attr, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.isdigit():
            return int(value)
    if hasattr(stream, "__len__"):
        return len(stream)
    try:
        position = stream.tell()
        end = os.fstat(stream.fileno()).st_size
        return end - position
    except (AttributeError, OSError, ValueError):
        pass
    try:
        if stream.seekable():
            position = stream.tell()
            end = stream.seek(0, io.SEEK_END)
            stream.seek(position)
            return int(end - position)
    except (AttributeError, OSError, ValueError):
        pass
    return None


def read_exactly(stream: Readable, count: int) -> bytes:
    """`count` bytes, or fewer only at end of stream (sockets may return short reads)."""
    first = stream.read(count)
    if len(first) >= count or not first:
        return first
    chunks = [first]
    got = len(first)
    while got < count:
        chunk = stream.read(count - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


COMPLETE_READ_RATE = 8 * 1000 * 1000
"""Bytes per second the server is assumed to read back at least while it answers `complete`."""


def complete_timeout(timeout: Timeout, size: int) -> Timeout:
    """The transport's timeout, its read part raised to `size / COMPLETE_READ_RATE` seconds.

    `complete` answers only once the server has assembled and checked the whole object (the
    emulator reads it back and analyses it: 10-30 s for 1 GiB on a busy machine), so a fixed
    30 s read timeout would give up on a healthy `complete` and send it again."""
    floor = size / COMPLETE_READ_RATE
    if isinstance(timeout, tuple):
        return (timeout[0], max(timeout[1], floor))
    return (timeout, max(timeout, floor))


def checks_etags(url: str) -> bool:
    """Whether parts PUT to `url` are worth checking against the store's MD5 ETag: only over
    plain HTTP to another machine. HTTPS (every provider's part URLs in production) already
    authenticates every byte it carries, and loopback crosses no wire. The check hashes every
    byte sent: ~1.4 CPU s per GiB, a tenth of a 1 GiB upload's time on 2 cores beside the
    store (bench/bench_upload.py), and what parted us from the SDK's speed, which checks nothing."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "http":
        return False
    host = (parts.hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # a name: another machine


def etag_matches(etag: str, md5_hex: str) -> bool:
    """True unless the store returned an MD5-looking ETag that differs from the part's MD5.

    Multipart-style (`...-3`) or opaque ETags cannot be checked and are accepted.
    """
    value = etag.strip().strip('"').lower()
    return not _MD5_ETAG.match(value) or value == md5_hex


@dataclass(frozen=True)
class UploadOutcome:
    request_id: str
    upload_id: str
    parts: list[CompletedPart]
    size: int
    part_size: int


ProgressCallback = Callable[[int], None]


class _Inline:
    """The part of `ThreadPoolExecutor` the part loop uses, running each task at submit."""

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args))
        except Exception as exc:  # noqa: BLE001 - the caller sees it, as from a pool's future
            future.set_exception(exc)
        return future

    def __enter__(self) -> _Inline:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class MultipartUploader:
    """Runs one upload at a time per call; safe to share between threads."""

    def __init__(
        self,
        transport: Transport,
        *,
        part_size: int = MIN_PART_SIZE,
        max_threads: int = 3,
        show_progress: bool = False,
        adjuster: PartSizeAdjuster | None = None,
        etag_attempts: int = 3,
        max_upload_bytes: int = MAX_UPLOAD_BYTES,
        memory_budget: int | None = None,
        check_etags: bool | None = None,
    ) -> None:
        """`check_etags`: compare each part's ETag with the MD5 of what was sent (and send it
        again on a mismatch); None (the default) decides per URL, see `checks_etags`."""
        if max_threads < 1:
            raise InvalidInputError("max_threads must be >= 1")
        self.transport = transport
        self.part_size = part_size
        self.max_threads = max_threads
        self.memory_budget = memory_budget
        self.show_progress = show_progress
        self.adjuster = adjuster or PartSizeAdjuster()
        self.etag_attempts = max(1, etag_attempts)
        self.max_upload_bytes = max_upload_bytes
        self.check_etags = check_etags

    def upload(
        self,
        source: Any,
        *,
        size: int | None = None,
        file_name: str | None = None,
        on_initiated: Callable[[str], None] | None = None,
        progress: ProgressCallback | None = None,
    ) -> UploadOutcome:
        """Upload `source` and return the request id with the parts sent.

        `on_initiated(request_id)` runs right after initiate, before any part; if it raises,
        the upload stops. `progress(n)` is called with each part's byte count as it lands.
        """
        src = open_source(source, size=size, file_name=file_name)
        try:
            self._check_size(src.size)
            part_size, threads = plan_upload(
                src.size,
                memory_budget=self.memory_budget,
                part_size=self.part_size,
                max_threads=self.max_threads,
                adjuster=self.adjuster,
                ranged=src.ranges is not None,
            )
            count = self.adjuster.part_count(part_size, src.size)
            initiated = self._initiate(src.name, count)
            logger.info(
                "upload %s: %d bytes in %d parts, %d at a time%s",
                initiated.request_id,
                src.size,
                count,
                threads,
                " (ranged reads)" if src.ranges is not None else "",
            )
            if on_initiated is not None:
                on_initiated(initiated.request_id)
            parts = self._send_parts(src, initiated, part_size, threads, progress)
            self._complete(initiated, parts, src.size)
        finally:
            src.close()
        logger.info("upload %s completed", initiated.request_id)
        return UploadOutcome(initiated.request_id, initiated.upload_id, parts, src.size, part_size)

    def _check_size(self, size: int) -> None:
        if size > self.max_upload_bytes:
            raise FileSizeLimitExceededError(
                f"file size ({size / MiB:.2f} MB) exceeds the async maximum ({self.max_upload_bytes / MiB:.0f} MB)",
                max_size_mb=self.max_upload_bytes / MiB,
                actual_size_mb=size / MiB,
                provider=self.transport.provider,
            )

    def _initiate(self, name: str, count: int) -> InitiateResponse:
        body = self.transport.request_json(
            "POST", INITIATE_PATH, params={"file_name": name, "part_count": count}, idempotent=False
        )
        initiated = InitiateResponse.model_validate(body)
        if len(initiated.presigned_urls) != count:
            raise UploadError(
                f"initiate returned {len(initiated.presigned_urls)} part URLs for {count} parts",
                request_id=initiated.request_id,
                provider=self.transport.provider,
            )
        return initiated

    def _complete(self, initiated: InitiateResponse, parts: list[CompletedPart], size: int) -> None:
        payload = {
            "request_id": initiated.request_id,
            "upload_id": initiated.upload_id,
            "parts": [p.model_dump() for p in sorted(parts, key=lambda p: p.PartNumber)],
        }
        # Completing with the same parts twice gives the same upload, so a retry is safe.
        self.transport.request(
            "POST",
            COMPLETE_PATH,
            json=payload,
            idempotent=True,
            request_id=initiated.request_id,
            timeout=complete_timeout(self.transport.timeout, size),
        )

    # ------------------------------------------------------------------ parts

    def _send_parts(
        self,
        src: UploadSource,
        initiated: InitiateResponse,
        part_size: int,
        threads: int,
        progress: ProgressCallback | None,
    ) -> list[CompletedPart]:
        slots = threading.BoundedSemaphore(threads)
        failed = threading.Event()
        futures: list[Future[CompletedPart]] = []
        bar = tqdm(
            total=src.size, unit="B", unit_scale=True, desc="Uploading parts", disable=not self.show_progress
        )

        def landed(future: Future[CompletedPart], count: int) -> None:
            slots.release()
            if future.exception() is not None:
                failed.set()
                return
            bar.update(count)
            if progress is not None:
                progress(count)

        offset = 0
        # One part at a time is sent from this thread: a thread per upload for it (a night's
        # short recordings are one part each, 2,000 threads started and ended) is churn.
        pool = _Inline() if threads == 1 else ThreadPoolExecutor(threads, thread_name_prefix="valence-part")
        with bar, pool:
            for part in sorted(initiated.presigned_urls, key=lambda p: p.part_number):
                length = min(part_size, src.size - offset)
                slots.acquire()  # before reading: this is what bounds memory
                if failed.is_set():
                    slots.release()
                    break
                if src.ranges is not None:
                    # The worker streams its own part: reads run in parallel, like the PUTs.
                    future = pool.submit(
                        self._stream_part, src.ranges, offset, length, part, initiated.request_id
                    )
                else:
                    data = read_exactly(src.stream, length)
                    if len(data) != length:
                        slots.release()
                        failed.set()
                        raise self._ended_early(part.part_number, src.size, initiated.request_id)
                    future = pool.submit(self._put_part, part, data, initiated.request_id)
                    del data  # the task holds the only reference; freed when its PUT is done
                future.add_done_callback(functools.partial(landed, count=length))
                futures.append(future)
                offset += length
        return self._collect(futures, initiated.request_id)

    def _ended_early(self, part_number: int, size: int, request_id: str) -> UploadError:
        return UploadError(
            f"source ended early at part {part_number}: expected {size} bytes",
            request_id=request_id,
            provider=self.transport.provider,
        )

    def _stream_part(
        self, ranges: RangeReadable, offset: int, length: int, part: PresignedPart, request_id: str
    ) -> CompletedPart:
        bodies: list[_PartBody] = []

        def ended_early(at: int) -> Exception:
            return self._ended_early(part.part_number, at, request_id)

        hashed = self._checks(part.url)

        def body() -> _PartBody:  # a fresh read of the range for every attempt of the PUT
            bodies.append(_PartBody(ranges, offset, length, ended_early, hashed))
            return bodies[-1]

        def md5_hex() -> str:
            md5 = bodies[-1].md5
            return md5.hexdigest() if md5 is not None else ""

        return self._put_part(part, body, request_id, md5_hex, check=hashed)

    def _checks(self, url: str) -> bool:
        return self.check_etags if self.check_etags is not None else checks_etags(url)

    def _collect(self, futures: list[Future[CompletedPart]], request_id: str) -> list[CompletedPart]:
        """Every part's (PartNumber, ETag), or the first part failure: an UploadError for the
        store, the source's own exception for a failed read (its owner knows what it means,
        e.g. the pipeline's retryable `SourceReadError`)."""
        parts: list[CompletedPart] = []
        for future in futures:
            error = future.exception()
            if isinstance(error, UploadError):
                raise error
            if isinstance(error, Exception) and not isinstance(error, ValenceSDKException | OSError):
                raise error
            if error is not None:
                raise UploadError(
                    f"part upload failed: {type(error).__name__}: {error}",
                    request_id=request_id,
                    provider=self.transport.provider,
                ) from error
            parts.append(future.result())
        return parts

    def _put_part(
        self,
        part: PresignedPart,
        data: bytes | Callable[[], _PartBody],
        request_id: str,
        sent_md5: Callable[[], str] | None = None,
        check: bool | None = None,
    ) -> CompletedPart:
        """One PUT (the transport retries failures), then the ETag check (retried here) where
        it applies (`_checks`).

        `data` is the part's bytes, or a factory of a streamed body for each attempt together
        with `sent_md5`, which gives the MD5 of what the last attempt sent; `check`, when the
        caller already decided whether to check (and hash), saves deciding again."""
        check = self._checks(part.url) if check is None else check
        fixed_md5 = (
            hashlib.md5(data, usedforsecurity=False).hexdigest() if check and isinstance(data, bytes) else ""
        )
        for attempt in range(1, self.etag_attempts + 1):
            try:
                response = self.transport.request(
                    "PUT", part.url, data=data, authenticated=False, rate_limited=False, request_id=request_id
                )
            except ValenceSDKException as exc:
                raise UploadError(
                    f"part {part.part_number} failed: {exc.message}",
                    status=exc.status,
                    error_code=exc.error_code,
                    request_id=request_id,
                    retryable=exc.retryable,
                    provider=self.transport.provider,
                ) from exc
            etag = response.headers.get("ETag", "")
            md5_hex = sent_md5() if sent_md5 is not None else fixed_md5
            if etag and (not check or etag_matches(etag, md5_hex)):
                return CompletedPart(ETag=etag, PartNumber=part.part_number)
            logger.warning(
                "part %d to %s: ETag %r does not match MD5 %s (attempt %d/%d)",
                part.part_number,
                redact_url(part.url),
                etag,
                md5_hex,
                attempt,
                self.etag_attempts,
            )
        raise UploadError(
            f"part {part.part_number}: the store's ETag never matched the part's MD5",
            request_id=request_id,
            retryable=True,
            provider=self.transport.provider,
        )
