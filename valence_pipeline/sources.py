"""What bytes each provider gets for one recording, streamed from S3 (no Prefect here).

Valence wants mono 16-bit PCM WAV: a recording that already is one goes byte for byte, anything
else (stereo, another codec, one channel of a split call) is converted on the fly
(`WavStream`). Valsea takes the original container unless one channel of a split call is wanted.

Byte-for-byte payloads are an `S3Stream`: a front-to-back reader for request bodies (Valsea) that
also offers `iter_range`, so the multipart uploader reads each part with its own resumable,
pinned ranged GET in parallel with the others. Converted payloads are read once, front to back,
through a windowed `S3RangeReader`. Nothing is held whole or copied to disk, and a read that
keeps failing raises `SourceReadError` instead of producing audio.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from valence_pipeline.audio import AudioInfo, WavStream
from valence_pipeline.s3 import ObjectVersion, S3RangeReader, S3Stream
from valence_pipeline.settings import Provider, Settings

CONVERT_WINDOW = 4 * 1024 * 1024
"""Read-ahead of the reader feeding the converter: the converter's only buffer of the source."""


@dataclass
class Payload:
    """A readable of exactly `size` bytes, and the file name to announce it under."""

    stream: Any
    size: int
    name: str
    converted: bool

    def close(self) -> None:
        self.stream.close()


def sends_original(info: AudioInfo, provider: Provider, channel: int | None) -> bool:
    """True when the provider gets the object's own bytes (no conversion)."""
    return channel is None and (provider == "valsea" or info.is_pcm16_mono_wav)


def open_payload(
    s3: Any,
    obj: ObjectVersion,
    info: AudioInfo,
    provider: Provider,
    channel: int | None = None,
    settings: Settings | None = None,
) -> Payload:
    """The stream `provider` gets for `obj` (one `channel` of it, or all of it downmixed).

    `settings` is accepted for the caller's convenience (the conversion does not depend on it
    today; the upload's part plan comes from the client's own settings).
    """
    del settings
    name = os.path.basename(obj.key)
    if sends_original(info, provider, channel):
        return Payload(S3Stream(s3, obj), obj.size, name, converted=False)
    stream = WavStream(lambda: S3RangeReader(s3, obj, window=CONVERT_WINDOW), info, channel)
    stem = os.path.splitext(name)[0]
    suffix = f".ch{channel}" if channel is not None else ""
    return Payload(stream, stream.size, f"{stem}{suffix}.wav", converted=True)
