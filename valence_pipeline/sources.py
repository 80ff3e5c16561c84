"""What bytes each provider gets for one call, streamed from S3 (nothing held whole, no disk)."""

from __future__ import annotations

import os
from typing import Any

from valence_pipeline.audio import WavStream
from valence_pipeline.s3 import S3RangeReader
from valence_pipeline.work import WorkItem

STREAM_WINDOW = 4 * 1024 * 1024


def open_payload(s3: Any, item: WorkItem) -> tuple[Any, int, str]:
    """(readable stream, exact size, file name) of what this provider gets.

    Valence wants mono 16-bit WAV: anything else is converted on the fly (`WavStream`). Valsea
    takes the original container unless one channel of a split call is wanted. Either way the
    bytes stream from S3; nothing is held whole or copied to disk.
    """
    obj, info = item.obj, item.info
    name = os.path.basename(obj.key)
    original = item.channel is None and (item.provider == "valsea" or info.is_pcm16_mono_wav)
    if original:
        body = s3.get_object(**obj.get_kwargs())["Body"]
        return body, obj.size, name
    stream = WavStream(lambda: S3RangeReader(s3, obj, window=STREAM_WINDOW), info, item.channel)
    stem = os.path.splitext(name)[0]
    suffix = f".ch{item.channel}" if item.channel is not None else ""
    return stream, stream.size, f"{stem}{suffix}.wav"
