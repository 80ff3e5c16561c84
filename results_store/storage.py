"""Where the Parquet dataset lives: a local folder or an S3 prefix, behind one small interface.

Data goes through pyarrow's filesystem (`S3FileSystem` configured from boto3's standard
environment: `AWS_ENDPOINT_URL`, keys, profile, region), so readers and writers share it.
The commit log needs one thing pyarrow lacks, create-if-absent: locally a hard link (atomic,
fails if the name exists), on S3 a conditional PUT (`If-None-Match: *`) through boto3.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import os
import uuid
from dataclasses import dataclass, field
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
    _s3_client: Any = field(default=None, repr=False)

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
        """Replace `rel` with `data`, never exposing a half-written file."""
        if self.is_s3:
            # One PUT: S3 shows the whole object or nothing.
            self._client().put_object(Bucket=self._bucket, Key=self._key(rel), Body=data)
            return
        target = Path(self.path(rel))
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".tmp-{uuid.uuid4().hex}")
        _write_synced(tmp, data)
        os.replace(tmp, target)

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        """Create `rel` holding `data` only if nothing is there yet; False if it exists."""
        if self.is_s3:
            return self._put_if_absent(rel, data)
        target = Path(self.path(rel))
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".tmp-{uuid.uuid4().hex}")
        _write_synced(tmp, data)
        try:
            os.link(tmp, target)  # atomic, and fails if `target` exists: the compare-and-swap
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink()

    def _put_if_absent(self, rel: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._client().put_object(Bucket=self._bucket, Key=self._key(rel), Body=data, IfNoneMatch="*")
            return True
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            # 412: the key exists; 409: another conditional write to it is in flight.
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                return False
            raise

    def list(self, rel_dir: str, *, recursive: bool = False) -> list[Entry]:
        selector = pafs.FileSelector(self.path(rel_dir), recursive=recursive, allow_not_found=True)
        prefix = self.root + "/"
        return [
            Entry(info.path[len(prefix) :], info.size or 0, info.mtime)
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.File
        ]

    def delete(self, rel: str) -> None:
        """Delete `rel` if it exists."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(self.path(rel))

    def prepare_parent(self, rel: str) -> None:
        """Create the local folder `rel` will be written into (S3 needs none)."""
        if not self.is_s3:
            Path(self.path(rel)).parent.mkdir(parents=True, exist_ok=True)

    def move(self, src: str, dst: str) -> None:
        """Local: an atomic rename. S3: copy then delete (the copy appears whole, or not)."""
        self.prepare_parent(dst)
        self.fs.move(self.path(src), self.path(dst))

    def remove_empty_dirs(self, rel_dir: str) -> None:
        """Local housekeeping after staging is drained (S3 has no directories to remove)."""
        if self.is_s3:
            return
        top = Path(self.path(rel_dir))
        if not top.is_dir():
            return
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: len(w[0]), reverse=True):
            with contextlib.suppress(OSError):
                Path(dirpath).rmdir()

    @property
    def _bucket(self) -> str:
        return self.root.split("/", 1)[0]

    def _key(self, rel: str) -> str:
        return self.path(rel).split("/", 1)[1]

    def _client(self) -> Any:
        if self._s3_client is None:
            self._s3_client = s3_client()
        return self._s3_client


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


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
    """The boto3 S3 client matching `s3_filesystem()` (used for conditional PUTs)."""
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
