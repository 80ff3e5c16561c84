"""S3 access for the pipeline: URIs, listing object versions, and a seekable ranged reader.

boto3 is configured the standard way (`AWS_ENDPOINT_URL`, the credential chain, profiles);
nothing S3-specific lives in our settings.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote, unquote

log = logging.getLogger(__name__)

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

    def get_kwargs(self) -> dict[str, str]:
        """Pin reads to exactly this version (a newer upload must not change what we process)."""
        kwargs = {"Bucket": self.bucket, "Key": self.key}
        if self.version_id and self.version_id != NULL_VERSION:
            kwargs["VersionId"] = self.version_id
        return kwargs


def make_s3_client() -> Any:
    """A boto3 S3 client from the standard environment, with adaptive retries."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", config=Config(retries={"max_attempts": 5, "mode": "adaptive"}))


def list_latest_versions(s3: Any, bucket: str, prefix: str) -> Iterator[ObjectVersion]:
    """Latest, non-deleted version of every object under `prefix` (paginated).

    `ListObjectVersions` gives version ids in the listing itself (no HEAD per object) and works
    on unversioned buckets too, where every version id is 'null'.
    """
    paginator = s3.get_paginator("list_object_versions")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Versions", []):
            if not item.get("IsLatest", True):
                continue
            yield ObjectVersion(
                bucket=bucket,
                key=item["Key"],
                version_id=item.get("VersionId") or NULL_VERSION,
                etag=item["ETag"].strip('"'),
                size=int(item["Size"]),
                last_modified=item["LastModified"],
            )


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


class S3RangeReader(io.RawIOBase):
    """A read-only, seekable file over one S3 object version, fetched by ranged GETs.

    Decoders (soundfile) seek around headers and read forward; a read-ahead window keeps the
    number of GETs small while memory stays bounded by `window` bytes.
    """

    def __init__(self, s3: Any, obj: ObjectVersion, window: int = 1024 * 1024) -> None:
        super().__init__()
        self._s3 = s3
        self._obj = obj
        self._window = window
        self._pos = 0
        self._buf_start = 0
        self._buf = b""
        self.requests = 0
        self.bytes_fetched = 0

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
        end = min(self._obj.size, self._pos + length) - 1
        response = self._s3.get_object(Range=f"bytes={self._pos}-{end}", **self._obj.get_kwargs())
        self._buf = response["Body"].read()
        self._buf_start = self._pos
        self.requests += 1
        self.bytes_fetched += len(self._buf)
