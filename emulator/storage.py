"""Where async uploads land: our own disk behind HMAC-signed part URLs, or a real S3.

Local mode (default) serves `PUT /_parts/{upload_id}/{part}?expires=E&signature=S` itself,
where S = HMAC-SHA256(secret, "upload_id:part:expires") and E is a Unix time (real clock).
Bodies are streamed to `<data_dir>/uploads/<request_id>/part-NNNNN`; the ETag is the quoted
MD5 of the part, as S3 answers. S3 mode (`--s3-endpoint`) calls CreateMultipartUpload, hands
out boto3-presigned `upload_part` URLs and completes and reads the object back through S3.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

COPY_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class PartInfo:
    etag: str
    """Quoted, as S3 sends it: '"<md5 hex>"'."""
    size: int


def normalise_etag(etag: str) -> str:
    return etag.strip().strip('"').lower()


def copy_into(src: IO[bytes], dst: IO[bytes], digest: Any) -> int:
    """Copy `src` to `dst` in 1 MiB chunks, feeding `digest`; returns the bytes copied."""
    size = 0
    while chunk := src.read(COPY_CHUNK):
        dst.write(chunk)
        digest.update(chunk)
        size += len(chunk)
    return size


def copy_hashing(src: IO[bytes], dst: IO[bytes]) -> tuple[str, int]:
    """Copy `src` to `dst`; (sha256 hex, bytes)."""
    digest = hashlib.sha256()
    size = copy_into(src, dst, digest)
    return digest.hexdigest(), size


class PartSigner:
    """Signs and checks our own part URLs."""

    def __init__(self, secret: bytes, expiry_s: float) -> None:
        self._secret = secret
        self.expiry_s = expiry_s

    def signature(self, upload_id: str, part_number: int, expires: int) -> str:
        msg = f"{upload_id}:{part_number}:{expires}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()

    def url(self, base_url: str, upload_id: str, part_number: int, now: float | None = None) -> str:
        expires = int((time.time() if now is None else now) + self.expiry_s)
        sig = self.signature(upload_id, part_number, expires)
        return f"{base_url.rstrip('/')}/_parts/{quote(upload_id)}/{part_number}?expires={expires}&signature={sig}"

    def check(self, upload_id: str, part_number: int, expires: str, signature: str) -> str | None:
        """None if valid, else the S3 error code to answer with (403)."""
        try:
            exp = int(expires)
        except ValueError:
            return "AccessDenied"
        if not hmac.compare_digest(self.signature(upload_id, part_number, exp), signature):
            return "SignatureDoesNotMatch"
        if time.time() >= exp:
            return "AccessDenied"
        return None


class LocalParts:
    """Parts on our disk, one folder per request."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, request_id: str) -> Path:
        return self.root / request_id

    def part_path(self, request_id: str, part_number: int) -> Path:
        return self.folder(request_id) / f"part-{part_number:05d}"

    def assemble(self, request_id: str, part_numbers: list[int]) -> tuple[Path, str, int]:
        """Concatenate the listed parts into one file (streamed); (path, sha256, size)."""
        out = self.folder(request_id) / "object"
        digest, size = hashlib.sha256(), 0
        with out.open("wb") as dst:
            for n in part_numbers:
                with self.part_path(request_id, n).open("rb") as src:
                    size += copy_into(src, dst, digest)
        return out, digest.hexdigest(), size

    def remove(self, request_id: str) -> None:
        shutil.rmtree(self.folder(request_id), ignore_errors=True)


class S3Parts:
    """Multipart uploads on a real S3 (SeaweedFS in tests). Credentials: the standard AWS
    environment variables / credential chain; the client is built on first use."""

    def __init__(
        self, endpoint: str, bucket: str, expiry_s: float, public_endpoint: str | None = None
    ) -> None:
        self.endpoint = endpoint
        self.public_endpoint = public_endpoint
        self.bucket = bucket
        self.expiry_s = expiry_s
        self._client: Any = None
        self._presigner: Any = None
        self._lock = threading.Lock()

    @staticmethod
    def _make_client(endpoint: str) -> Any:
        import boto3  # local: boto3 costs ~0.3 s to import; only S3 mode needs it
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name=os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1",
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )

    @property
    def presigner(self) -> Any:
        """Signs part URLs for the clients' route to the S3 (no request is made with it)."""
        if self.public_endpoint is None:
            return self.client
        with self._lock:
            if self._presigner is None:
                self._presigner = self._make_client(self.public_endpoint)
            return self._presigner

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                client = self._make_client(self.endpoint)
                try:
                    client.head_bucket(Bucket=self.bucket)
                except client.exceptions.ClientError:
                    client.create_bucket(Bucket=self.bucket)
                self._client = client
            return self._client

    def create(self, key: str) -> str:
        return str(self.client.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"])

    def url(self, key: str, upload_id: str, part_number: int) -> str:
        return str(
            self.presigner.generate_presigned_url(
                "upload_part",
                Params={"Bucket": self.bucket, "Key": key, "UploadId": upload_id, "PartNumber": part_number},
                ExpiresIn=int(self.expiry_s),
            )
        )

    def list_parts(self, key: str, upload_id: str) -> dict[int, PartInfo]:
        parts: dict[int, PartInfo] = {}
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "UploadId": upload_id}
        while True:
            page = self.client.list_parts(**kwargs)
            for p in page.get("Parts", []):
                parts[int(p["PartNumber"])] = PartInfo(etag=p["ETag"], size=int(p["Size"]))
            if not page.get("IsTruncated"):
                return parts
            kwargs["PartNumberMarker"] = page["NextPartNumberMarker"]

    def complete(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> None:
        self.client.complete_multipart_upload(
            Bucket=self.bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etag} for n, etag in parts]},
        )

    def abort(self, key: str, upload_id: str) -> None:
        self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)

    def download(self, key: str, dest: Path) -> tuple[str, int]:
        """Stream the object to `dest`; (sha256, size)."""
        body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        try:
            with dest.open("wb") as f:
                return copy_hashing(body, f)
        finally:
            body.close()
