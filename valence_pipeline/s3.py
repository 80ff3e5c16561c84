"""S3 access for the pipeline: URIs, listing object versions, and reading one version.

boto3 is configured the standard way (`AWS_ENDPOINT_URL`, the credential chain, profiles);
nothing S3-specific lives in our settings.

Every read is pinned to the version discovery recorded (its version id, or If-Match on its
ETag in an unversioned bucket) and survives a broken connection: botocore retries a request
that fails, but not a body that breaks half-way, so `read_range` and `S3Stream` resume with a
ranged GET from the byte where the body stopped, as s3transfer's downloads do. A read that
keeps failing raises `SourceReadError` (retry the step later); a changed object raises
`ObjectChangedError` (a new version). Neither ever turns into short or wrong bytes: decoders
read through a callback that swallows exceptions, so `S3RangeReader` also keeps the error for
the caller to re-raise (`audio.raise_read_error`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote

log = logging.getLogger(__name__)

READ_CHUNK = 256 * 1024
"""Bytes taken from a response body at a time: what a broken body can lose (one chunk, read
again on resume). 64 KiB chunks cost botocore + urllib3 almost half the throughput."""

NULL_VERSION = "null"
"""What S3 reports as the version id of an object in an unversioned bucket."""


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """'s3://bucket/some/key' -> ('bucket', 'some/key'). The key may be empty (a bucket root)."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {uri!r}")
    return bucket, key


_VERSION_QUERY = "?versionId="


def object_uri(bucket: str, key: str, version_id: str | None = None) -> str:
    """`s3://bucket/key`, or `s3://bucket/<percent-encoded key>?versionId=<encoded id>` naming
    one version (what upload events and `process_recordings(uris)` carry)."""
    if not version_id or version_id == NULL_VERSION:
        return f"s3://{bucket}/{key}"
    return f"s3://{bucket}/{quote(key, safe='/')}{_VERSION_QUERY}{quote(version_id, safe='')}"


def parse_object_uri(uri: str) -> tuple[str, str, str | None]:
    """The inverse of `object_uri`: (bucket, key, version id or None). Without `?versionId=`
    the key is taken as written (no decoding), as `parse_s3_uri` does."""
    bucket, rest = parse_s3_uri(uri)
    if _VERSION_QUERY not in rest:
        return bucket, rest, None
    key, _, version = rest.rpartition(_VERSION_QUERY)
    if not key or not version:
        raise ValueError(f"not an object version URI: {uri!r}")
    return bucket, unquote(key), unquote(version)


@dataclass(frozen=True)
class ObjectVersion:
    """One version of one object: what the pipeline processes and records lineage for."""

    bucket: str
    key: str
    version_id: str
    etag: str
    size: int
    last_modified: datetime

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def version_token(self) -> str:
        """The version id, or the ETag where the bucket is unversioned (version id 'null')."""
        return self.version_id if self.version_id and self.version_id != NULL_VERSION else self.etag

    @property
    def versioned(self) -> bool:
        return bool(self.version_id) and self.version_id != NULL_VERSION

    def get_kwargs(self) -> dict[str, str]:
        """Pin reads to exactly this version (a newer upload must not change what we process):
        the version id, or on an unversioned bucket If-Match on the recorded ETag."""
        kwargs = {"Bucket": self.bucket, "Key": self.key}
        if self.versioned:
            kwargs["VersionId"] = self.version_id
        elif self.etag:
            kwargs["IfMatch"] = f'"{self.etag}"'
        return kwargs


def make_s3_client() -> Any:
    """A boto3 S3 client from the standard environment, with adaptive retries."""
    import boto3
    from botocore.config import Config

    # Enough pooled connections for the parallel part reads of a few uploads at once.
    config = Config(retries={"max_attempts": 5, "mode": "adaptive"}, max_pool_connections=32)
    return boto3.client("s3", config=config)


LIST_PAGE_SIZE = 250
"""Objects per listing call. A page is parsed into Python objects all at once, and that burst
is what a listing leaves in the worker's memory; 250 keeps it near a small night's (4 calls per
1,000 objects instead of 1)."""


def list_latest_versions(
    s3: Any, bucket: str, prefix: str, page_size: int = LIST_PAGE_SIZE
) -> Iterator[ObjectVersion]:
    """Latest, non-deleted version of every object under `prefix`, a page at a time (nothing
    is held beyond the page being read, however large the prefix).

    `ListObjectVersions` gives version ids in the listing itself (no HEAD per object) and works
    on unversioned buckets too, where every version id is 'null'. The ETag of a 'null' version
    is taken from `ListObjectsV2` instead, for the same range of keys as the page (one more
    listing call per page, only for pages with such objects): it is what reads are pinned to
    (If-Match), and SeaweedFS's version listing reports a per-chunk ETag for objects over 8 MB
    that its GETs do not match.
    """
    after = ""  # the last key of the previous page: pages list keys in order
    paginator = s3.get_paginator("list_object_versions")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": page_size}):
        versions = page.get("Versions", [])
        latest = [item for item in versions if item.get("IsLatest", True)]
        etags: dict[str, str] = {}
        if any((item.get("VersionId") or NULL_VERSION) == NULL_VERSION for item in latest):
            etags = _current_etags(s3, bucket, prefix, after, latest[-1]["Key"], page_size)
        for item in latest:
            version_id = item.get("VersionId") or NULL_VERSION
            etag = item["ETag"].strip('"')
            if version_id == NULL_VERSION:
                etag = etags.get(item["Key"], etag)
            yield ObjectVersion(
                bucket=bucket,
                key=item["Key"],
                version_id=version_id,
                etag=etag,
                size=int(item["Size"]),
                # One shared tzinfo, not botocore's tzutc instance per object (held per file).
                last_modified=item["LastModified"].astimezone(UTC),
            )
        if versions:
            after = versions[-1]["Key"]


def _current_etags(
    s3: Any, bucket: str, prefix: str, after: str, last: str, page_size: int
) -> dict[str, str]:
    """Current ETags of the keys in (`after`, `last`] under `prefix`."""
    etags: dict[str, str] = {}
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "PaginationConfig": {"PageSize": page_size}}
    if after:
        kwargs["StartAfter"] = after
    for page in s3.get_paginator("list_objects_v2").paginate(**kwargs):
        for item in page.get("Contents", []):
            if item["Key"] > last:
                return etags
            etags[item["Key"]] = item["ETag"].strip('"')
            if item["Key"] == last:  # the page's range is done: no call for the next one
                return etags
    return etags


def head_version(s3: Any, bucket: str, key: str, version_id: str | None = None) -> ObjectVersion:
    """The given (or latest) version of one object, for `process_recordings(uris)`."""
    kwargs: dict[str, str] = {"Bucket": bucket, "Key": key}
    if version_id:
        kwargs["VersionId"] = version_id
    head = s3.head_object(**kwargs)
    return ObjectVersion(
        bucket=bucket,
        key=key,
        version_id=head.get("VersionId") or NULL_VERSION,
        etag=head["ETag"].strip('"'),
        size=int(head["ContentLength"]),
        last_modified=head["LastModified"],
    )


class SourceReadError(Exception):
    """Reading a recording from S3 kept failing after resuming: retry the step later.

    Deliberately not an `OSError`: raised from inside a request body, an OSError would look
    like a broken connection to the HTTP stack and be retried there with a half-read stream.
    """

    retryable = True


class ObjectChangedError(Exception):
    """The object is no longer the version discovery recorded (If-Match failed, or another
    ETag came back): a new version, to be processed on its own; not a failure of this one."""

    retryable = False


def _status_of(exc: Exception) -> int:
    response = getattr(exc, "response", None) or {}
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _is_transient(exc: Exception) -> bool:
    """A read worth resuming: the connection broke, timed out or the store answered 5xx."""
    from botocore.exceptions import (
        ClientError,
        HTTPClientError,
        IncompleteReadError,
        ResponseStreamingError,
    )
    from botocore.exceptions import (
        ConnectionError as BotoConnectionError,
    )
    from urllib3.exceptions import HTTPError as Urllib3Error

    if isinstance(exc, ClientError):
        status = _status_of(exc)
        return status >= 500 or status in (408, 429)
    transient = (
        BotoConnectionError,
        HTTPClientError,
        IncompleteReadError,
        ResponseStreamingError,
        Urllib3Error,
        OSError,
    )
    return isinstance(exc, transient)


@dataclass(frozen=True)
class ReadPolicy:
    """How hard a read resumes: `attempts` consecutive failures without a byte of progress
    end it (any progress resets the count, so a long read is never cut short by several
    unrelated resets), with capped exponential backoff between them."""

    attempts: int = 5
    backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    sleep: Callable[[float], None] = time.sleep

    def wait(self, failures: int) -> None:
        self.sleep(min(self.max_backoff_s, self.backoff_s * 2 ** (failures - 1)))


DEFAULT_READ_POLICY = ReadPolicy()


def open_body(s3: Any, obj: ObjectVersion, start: int, end: int | None = None) -> Any:
    """The streaming body of bytes `start..end` (inclusive; None: to the end) of exactly `obj`.

    Pinned: `get_kwargs` carries the version id, or If-Match on the recorded ETag. A 412, or
    a store that ignores If-Match and answers with another ETag, is `ObjectChangedError`.
    """
    from botocore.exceptions import ClientError

    byte_range = f"bytes={start}-{'' if end is None else end}"
    try:
        response = s3.get_object(Range=byte_range, **obj.get_kwargs())
    except ClientError as exc:
        if _status_of(exc) == 412 or exc.response.get("Error", {}).get("Code") == "PreconditionFailed":
            raise ObjectChangedError(f"{obj.uri} changed since discovery (ETag {obj.etag})") from exc
        raise
    etag = str(response.get("ETag", "")).strip('"')
    if not obj.versioned and etag and etag != obj.etag:
        response["Body"].close()
        raise ObjectChangedError(f"{obj.uri} changed since discovery: ETag {etag}, recorded {obj.etag}")
    return response["Body"]


def iter_range(
    s3: Any, obj: ObjectVersion, start: int, length: int, policy: ReadPolicy = DEFAULT_READ_POLICY
) -> Iterator[bytes]:
    """The bytes `start..start+length` of `obj` (fewer only past its end), chunk by chunk,
    resuming with a ranged GET from where a broken body stopped, as s3transfer's downloads do.

    Raises `SourceReadError` when the read keeps failing, `ObjectChangedError` if `obj` changed.
    """
    end = start + max(0, min(length, obj.size - start))
    pos = start
    failures = 0  # consecutive, without progress
    while pos < end:
        before = pos
        try:
            body = open_body(s3, obj, pos, end - 1)
            try:
                for chunk in body.iter_chunks(READ_CHUNK):
                    chunk = chunk[: end - pos]
                    pos += len(chunk)
                    yield chunk
            finally:
                body.close()
            if pos < end:
                raise SourceReadError(f"{obj.uri}: the body ended at {pos}, before {end}")
        except ObjectChangedError:
            raise
        except Exception as exc:  # sorted by _is_transient just below
            if not (isinstance(exc, SourceReadError) or _is_transient(exc)):
                raise
            failures = 1 if pos > before else failures + 1
            if failures >= policy.attempts:
                raise SourceReadError(
                    f"reading {obj.uri} failed at byte {pos} after {failures} attempts: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            log.warning("resuming %s at byte %d after %s", obj.uri, pos, type(exc).__name__)
            policy.wait(failures)


def read_range(
    s3: Any, obj: ObjectVersion, start: int, length: int, policy: ReadPolicy = DEFAULT_READ_POLICY
) -> bytearray:
    """`iter_range` gathered into one buffer (the result plus one network chunk in memory)."""
    buf = bytearray()
    for chunk in iter_range(s3, obj, start, length, policy):
        buf += chunk
    return buf


class S3RangeReader(io.RawIOBase):
    """A read-only, seekable file over one S3 object version, fetched by ranged GETs.

    Decoders (soundfile) seek around headers and read forward; a read-ahead window keeps the
    number of GETs small while memory stays bounded by `window` bytes. Each window is a
    resumable `read_range`. soundfile calls `readinto` from a cffi callback that turns any
    exception into "0 bytes" (an early end of file), so the first error is also kept in
    `error`, and every later read fails at once: callers check it with `audio.raise_read_error`
    after the decoder returns, so a failed read never becomes short or padded audio.
    """

    def __init__(
        self, s3: Any, obj: ObjectVersion, window: int = 1024 * 1024, policy: ReadPolicy = DEFAULT_READ_POLICY
    ) -> None:
        super().__init__()
        self._s3 = s3
        self._obj = obj
        self._window = window
        self._policy = policy
        self._pos = 0
        self._buf_start = 0
        self._buf: bytes | bytearray = b""
        self.requests = 0
        self.bytes_fetched = 0
        self.error: Exception | None = None

    @property
    def size(self) -> int:
        return self._obj.size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._obj.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int | None = -1) -> bytes:
        if self.error is not None:
            raise self.error  # the decoder may retry after a "short read": never give it bytes
        try:
            return self._read(size)
        except Exception as exc:
            self.error = exc
            raise

    def _read(self, size: int | None) -> bytes:
        if size is None or size < 0:
            size = self._obj.size - self._pos
        size = min(size, self._obj.size - self._pos)
        if size <= 0:
            return b""
        out = bytearray()
        while len(out) < size:
            offset = self._pos - self._buf_start
            if not 0 <= offset < len(self._buf):
                self._fill(self._window)  # never more than one window in memory
                offset = 0
            chunk = self._buf[offset : offset + size - len(out)]
            out += chunk
            self._pos += len(chunk)
        return bytes(out)

    def _fill(self, length: int) -> None:
        self._buf = b""  # the old window goes before the new one arrives
        self._buf = read_range(self._s3, self._obj, self._pos, length, self._policy)
        self._buf_start = self._pos
        self.requests += 1
        self.bytes_fetched += len(self._buf)


class S3Stream(io.RawIOBase):
    """One object version read front to back (a provider's request body, the hash): one GET
    to the end, resumed from the current byte when the body breaks. `iter_range` serves
    callers that read parts in parallel instead (the multipart upload), each part its own
    resumable ranged GET. `size` is exact, so uploaders need no `size=`."""

    def __init__(self, s3: Any, obj: ObjectVersion, policy: ReadPolicy = DEFAULT_READ_POLICY) -> None:
        super().__init__()
        self._s3 = s3
        self._obj = obj
        self._policy = policy
        self._pos = 0
        self._body: Any = None
        self.size = obj.size
        self.name = obj.key
        self.error: Exception | None = None

    def readable(self) -> bool:
        return True

    def iter_range(self, offset: int, length: int) -> Iterator[bytes]:
        return iter_range(self._s3, self._obj, offset, length, self._policy)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int | None = -1) -> bytes:
        if self.error is not None:
            raise self.error
        try:
            return self._read(size)
        except Exception as exc:
            self.error = exc
            raise

    def _read(self, size: int | None) -> bytes:
        remaining = self._obj.size - self._pos
        size = remaining if size is None or size < 0 else min(size, remaining)
        if size <= 0:
            return b""
        out = bytearray()
        failures = 0  # consecutive, without progress
        while len(out) < size:
            try:
                if self._body is None:
                    self._body = open_body(self._s3, self._obj, self._pos)
                data: bytes = self._body.read(min(READ_CHUNK, size - len(out)))
                if not data:
                    raise SourceReadError(f"{self._obj.uri}: the body ended at byte {self._pos}")
                out += data
                self._pos += len(data)
                failures = 0
            except ObjectChangedError:
                raise
            except Exception as exc:  # sorted by _is_transient just below
                self._drop_body()
                if not (isinstance(exc, SourceReadError) or _is_transient(exc)):
                    raise
                failures += 1
                if failures >= self._policy.attempts:
                    raise SourceReadError(
                        f"reading {self._obj.uri} failed at byte {self._pos} after {failures} attempts: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
                log.warning("resuming %s at byte %d after %s", self._obj.uri, self._pos, type(exc).__name__)
                self._policy.wait(failures)
        return bytes(out)

    def _drop_body(self) -> None:
        if self._body is not None:
            with contextlib.suppress(Exception):  # a broken connection may fail to close; it is gone
                self._body.close()
            self._body = None

    def close(self) -> None:
        self._drop_body()
        super().close()
