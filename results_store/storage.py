"""Where the dataset lives: a local folder or an S3 prefix, and how each library reaches it.

Two clients read and write the same place, both configured from boto3's standard environment
(`AWS_ENDPOINT_URL`, keys, profile, region) so they agree with the pipeline's S3 reading:
delta-rs (its object-store options, `delta_storage_options`) writes the tables, and pyarrow's
filesystem (`Location`) reads commit log entries and data files for lineage.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    """A file under the dataset root: path relative to the root, size and modification time."""

    rel: str
    size: int
    mtime: dt.datetime | None


@dataclass
class Location:
    """A dataset root. `rel` paths are '/'-separated and relative to the root."""

    fs: pafs.FileSystem
    root: str
    """The root in `fs` terms: an absolute local path, or `bucket/prefix` on S3."""
    is_s3: bool

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def uri(self, rel: str) -> str:
        """What lineage stores: `s3://bucket/prefix/rel`, or the absolute local path."""
        return f"s3://{self.path(rel)}" if self.is_s3 else self.path(rel)

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type == pafs.FileType.File

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.path(rel)) as stream:
            return bytes(stream.read())

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write `rel` whole (pictures beside the tables): S3 shows a whole object or none; a
        local file is written beside its place and renamed in."""
        if not self.is_s3:
            self.fs.create_dir(self.path(rel).rsplit("/", 1)[0], recursive=True)
            tmp = f"{self.path(rel)}.tmp"
            with self.fs.open_output_stream(tmp) as stream:
                stream.write(data)
            self.fs.move(tmp, self.path(rel))
            return
        with self.fs.open_output_stream(self.path(rel)) as stream:
            stream.write(data)

    def list(self, rel_dir: str, *, recursive: bool = False) -> list[Entry]:
        selector = pafs.FileSelector(self.path(rel_dir), recursive=recursive, allow_not_found=True)
        prefix = self.root + "/"
        return [
            Entry(info.path[len(prefix) :], info.size or 0, info.mtime)
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.File
        ]


def open_location(output_uri: str) -> Location:
    """A `Location` for `s3://bucket/prefix`, `file:///path` or a plain local path."""
    if output_uri.startswith("s3://"):
        root = output_uri[len("s3://") :].strip("/")
        if not root:
            raise ValueError(f"no bucket in {output_uri!r}")
        return Location(fs=s3_filesystem(), root=root, is_s3=True)
    path = urlparse(output_uri).path if output_uri.startswith("file://") else output_uri
    local_root = Path(path).expanduser().resolve()
    local_root.mkdir(parents=True, exist_ok=True)
    return Location(fs=pafs.LocalFileSystem(), root=local_root.as_posix(), is_s3=False)


_AWS_ENV = (
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
)  # fmt: skip


def s3_filesystem() -> pafs.S3FileSystem:
    """pyarrow's S3 filesystem configured the way boto3 would be from the same environment
    (`AWS_ENDPOINT_URL[_S3]`, `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`,
    `AWS_PROFILE`, `AWS_DEFAULT_REGION`), so the pipeline and the dataset agree on where S3 is."""
    return _s3_clients(tuple(os.environ.get(name) for name in _AWS_ENV))[1]


def s3_client() -> Any:
    """The boto3 S3 client matching `s3_filesystem()`."""
    return _s3_clients(tuple(os.environ.get(name) for name in _AWS_ENV))[0]


@functools.lru_cache(maxsize=4)
def _s3_clients(env: tuple[str | None, ...]) -> tuple[Any, pafs.S3FileSystem]:
    """One boto3 client and one pyarrow filesystem per process and AWS environment: building a
    boto3 client parses its service model, which costs more than the requests we make."""
    import boto3
    from botocore.credentials import RefreshableCredentials

    session = boto3.Session()
    client = session.client("s3")
    kwargs: dict[str, Any] = {"region": session.region_name or "us-east-1"}
    credentials = session.get_credentials()
    # Static keys are handed over; refreshable ones (roles, SSO) are left to pyarrow's own AWS
    # SDK, which reads the same default chain and keeps refreshing them.
    if credentials is not None and not isinstance(credentials, RefreshableCredentials):
        frozen = credentials.get_frozen_credentials()
        kwargs.update(access_key=frozen.access_key, secret_key=frozen.secret_key, session_token=frozen.token)
    parsed = urlparse(client.meta.endpoint_url)
    if parsed.hostname and not parsed.hostname.endswith("amazonaws.com"):
        kwargs.update(endpoint_override=parsed.netloc, scheme=parsed.scheme or "https")
    return client, pafs.S3FileSystem(**kwargs)


def delta_storage_options() -> dict[str, str]:
    """delta-rs's S3 options from the same environment as `s3_filesystem()`.

    Safe concurrent commits on S3 need create-if-absent for the log entry: `conditional_put =
    etag` makes delta-rs's object store send `If-None-Match: *` (AWS S3 since 2024, MinIO,
    SeaweedFS, R2 honour it), so of two writers racing for version N one gets 412 and retries
    on top of the other; no locking service (DynamoDB) is needed. delta-rs 1.x enables it for
    S3 by default; it is stated here because it is a requirement on the store: one that ignores
    the header would let two writers overwrite each other's log entry.
    """
    client = s3_client()
    options = {"AWS_REGION": client.meta.region_name or "us-east-1", "conditional_put": "etag"}
    endpoint = str(client.meta.endpoint_url)
    hostname = urlparse(endpoint).hostname or ""
    if not hostname.endswith("amazonaws.com"):  # AWS itself: delta-rs picks the regional endpoint
        options["AWS_ENDPOINT_URL"] = endpoint
        if endpoint.startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    import boto3
    from botocore.credentials import RefreshableCredentials

    credentials = boto3.Session().get_credentials()
    # Static keys are handed over; refreshable ones (roles, SSO) are left to delta-rs's own AWS
    # credential chain, which reads the same environment and keeps refreshing them.
    if credentials is not None and not isinstance(credentials, RefreshableCredentials):
        frozen = credentials.get_frozen_credentials()
        options.update(AWS_ACCESS_KEY_ID=frozen.access_key, AWS_SECRET_ACCESS_KEY=frozen.secret_key)
        if frozen.token:
            options["AWS_SESSION_TOKEN"] = frozen.token
    return options
