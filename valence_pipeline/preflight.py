"""Check one object version before any money is spent on it (no Prefect here).

Cheap checks first: size from the listing, then the audio headers through a few ranged
reads (and, for compressed formats, one decoding pass: corrupt data past the headers is a
rejection now, not a failed upload later), and only for audio that passes, one streamed read to hash the content (SHA-256 is what
lets the same recording under another key reuse results instead of paying again).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

from valence_pipeline.audio import (
    AudioInfo,
    AudioRejected,
    Route,
    check_limits,
    probe,
    route,
    verify_decodes,
    wav_size,
)
from valence_pipeline.s3 import ObjectVersion, S3RangeReader, S3Stream
from valence_pipeline.settings import Settings

log = logging.getLogger(__name__)

HASH_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Preflight:
    """The verdict on one object version: accepted with a route, or rejected with a reason."""

    obj: ObjectVersion
    info: AudioInfo | None = None
    sha256: str | None = None
    route: Route | None = None
    reject_code: str | None = None
    reject_detail: str | None = None

    @property
    def accepted(self) -> bool:
        return self.reject_code is None

    @property
    def reason(self) -> str | None:
        return f"{self.reject_code}: {self.reject_detail}" if self.reject_code else None


def sha256_of(s3: Any, obj: ObjectVersion) -> str:
    """Hash the object version by streaming it (memory: one chunk); a broken body resumes
    where it stopped, a read that keeps failing raises `SourceReadError`."""
    digest = hashlib.sha256()
    with S3Stream(s3, obj) as stream:
        while chunk := stream.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def run_preflight(s3: Any, obj: ObjectVersion, settings: Settings) -> Preflight:
    """Inspect `obj`; never raises for bad audio (that is a verdict, not an error).

    Raises `SourceReadError` when S3 keeps failing (retry later) and `ObjectChangedError`
    when the object is no longer the version discovered (a new version): neither is a verdict.
    """
    try:
        if obj.size == 0:
            raise AudioRejected("empty", "the object has no bytes")
        if obj.size > settings.max_file_bytes:
            raise AudioRejected(
                "too_large", f"{obj.size} bytes is over the {settings.max_file_bytes}-byte limit"
            )
        info = probe(S3RangeReader(s3, obj, window=256 * 1024))
        check_limits(
            info, obj.size, min_duration_s=settings.min_duration_s, max_bytes=settings.max_file_bytes
        )
        verify_decodes(S3RangeReader(s3, obj, window=1024 * 1024), info)
    except AudioRejected as rejected:
        log.info("rejected %s: %s", obj.uri, rejected)
        return Preflight(obj=obj, reject_code=rejected.code, reject_detail=rejected.detail)
    chosen = route(
        info,
        wav_size(info),
        discrete_max_s=settings.discrete_max_duration_s,
        discrete_max_bytes=settings.discrete_max_bytes,
    )
    return Preflight(obj=obj, info=info, sha256=sha256_of(s3, obj), route=chosen)
