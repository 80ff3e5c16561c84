"""Audio checks and conversion, streamed with bounded memory.

`probe` reads only what the decoder needs (headers, via ranged reads for S3 objects) to learn
container, codec, duration, sample rate and channels. `WavStream` turns any decodable source
into a 16-bit PCM mono WAV *as a stream*: the output size is known up front from the frame
count (so a multipart upload can be planned), and blocks are decoded and converted as the
consumer reads, so neither the source nor the result is ever held whole, nor copied to disk.
"""

from __future__ import annotations

import io
import logging
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any, Literal

log = logging.getLogger(__name__)

ACCEPTED_FORMATS = frozenset({"WAV", "WAVEX", "RF64", "FLAC", "OGG", "MP3"})
BLOCK_FRAMES = 64 * 1024
WAV_HEADER_BYTES = 44

_ARRAY_INTERFACE_KEYS = ("typestr", "descr", "strides")
"""Held for good so they stay interned: soundfile reads every block through numpy's
`__array_interface__`, a dict numpy builds with C string keys, which interns each key and
drops it again with the dict. Each probe did that once; a night of thousands churned through
CPython's interned-string table until it doubled in size (1.8 MiB) partway through the night."""

Route = Literal["discrete", "async"]
Opener = Callable[[], "Readable"]
Readable = IO[bytes] | io.RawIOBase


@dataclass(frozen=True)
class AudioInfo:
    """What preflight learned about one recording."""

    format: str
    subtype: str
    samplerate: int
    channels: int
    frames: int

    @property
    def duration_s(self) -> float:
        return self.frames / self.samplerate if self.samplerate else 0.0

    @property
    def is_pcm16_mono_wav(self) -> bool:
        """Already what Valence wants: sent byte for byte, no conversion."""
        return self.format == "WAV" and self.subtype == "PCM_16" and self.channels == 1


class AudioRejected(Exception):
    """A recording that must not be sent anywhere; `code` is the stored reason."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def raise_read_error(source: Any) -> None:
    """Re-raise the error a source hit while the decoder read it (soundfile's read callback
    swallows exceptions and reports an early end of file instead); see `S3RangeReader`."""
    error = getattr(source, "error", None)
    if isinstance(error, Exception):
        raise error


def probe(source: Readable) -> AudioInfo:
    """Decode just the headers of `source` (seekable) and describe it; AudioRejected if unreadable.

    A failed read of the source is raised as itself (retry later), never as a rejection.
    """
    import soundfile as sf  # local: a process that only sends bytes as they are never loads the decoder

    try:
        with sf.SoundFile(source) as f:
            info = AudioInfo(
                format=f.format,
                subtype=f.subtype,
                samplerate=f.samplerate,
                channels=f.channels,
                frames=f.frames,
            )
            if info.frames > 0 and info.samplerate > 0 and not _has_audio_at_the_end(f, info):
                raise_read_error(source)  # a read that failed is not a truncated file
                raise AudioRejected(
                    "truncated",
                    f"the header claims {info.duration_s:.1f} s of audio but the data ends before that",
                )
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError) as exc:
        raise_read_error(source)
        # libsndfile prefixes the message with the object's repr; keep only the reason.
        reason = str(exc).rsplit(": ", 1)[-1]
        raise AudioRejected("unreadable", f"not a decodable audio file ({reason})") from exc
    raise_read_error(source)  # a header parsed from a short read describes the wrong file
    if info.format not in ACCEPTED_FORMATS:
        raise AudioRejected(
            "unsupported_format", f"{info.format}/{info.subtype} is not WAV, FLAC, OGG or MP3"
        )
    if info.frames <= 0 or info.samplerate <= 0:
        raise AudioRejected("unreadable", "no audio frames")
    return info


def _has_audio_at_the_end(f: Any, info: AudioInfo) -> bool:
    """Whether the last second the header claims can be decoded.

    Compressed headers (FLAC's STREAMINFO, MP3's Xing frame) state a length the data need not
    have: a 5 s FLAC claiming 10 hours would be converted into 10 hours of padded silence,
    uploaded and billed. Seeking to the claimed end costs a few ranged reads; PCM WAV never
    fails it (libsndfile clamps its frame count to the file's length).
    """
    import soundfile as sf

    try:
        f.seek(max(0, info.frames - info.samplerate))
        return len(f.read(info.samplerate, dtype="float32")) > 0
    except (sf.LibsndfileError, RuntimeError):
        return False


COMPRESSED_FORMATS = frozenset({"FLAC", "OGG", "MP3"})


def verify_decodes(source: Readable, info: AudioInfo) -> None:
    """Decode a compressed recording end to end; AudioRejected if it cannot be.

    A FLAC, OGG or MP3 stream can be corrupt past its headers (a decoder that loses sync
    halfway): found here, it is a rejection before any money is spent; found while converting,
    it would fail an upload already under way, on every retry. PCM WAV needs no such pass: its
    samples decode whatever their bytes, and a short file is clamped, not failed.
    """
    if info.format not in COMPRESSED_FORMATS:
        return
    import soundfile as sf

    decoded = 0
    try:
        with sf.SoundFile(source) as f:
            for block in f.blocks(blocksize=BLOCK_FRAMES, dtype="float32", always_2d=True):
                decoded += len(block)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise_read_error(source)  # a read that failed is not a corrupt stream
        reason = str(exc).rsplit(": ", 1)[-1]
        raise AudioRejected(
            "undecodable", f"decoding failed after {decoded / info.samplerate:.1f} s ({reason})"
        ) from exc
    raise_read_error(source)
    if decoded < info.frames - info.samplerate:  # decoders may miscount by a fraction of a second
        raise AudioRejected(
            "truncated",
            f"the header claims {info.duration_s:.1f} s but only {decoded / info.samplerate:.1f} s decode",
        )


def check_limits(info: AudioInfo, size: int, *, min_duration_s: float, max_bytes: int) -> None:
    """Raise AudioRejected for audio the providers would refuse (so we never pay to learn it)."""
    if size > max_bytes:
        raise AudioRejected("too_large", f"{size} bytes is over the {max_bytes}-byte limit")
    if info.duration_s < min_duration_s:
        raise AudioRejected("too_short", f"{info.duration_s:.2f} s is shorter than {min_duration_s:g} s")


def route(info: AudioInfo, wav_bytes: int, *, discrete_max_s: float, discrete_max_bytes: int) -> Route:
    """4-10 s clips (that fit in 6 MB as WAV) go to the discrete API; the rest are uploaded."""
    if info.duration_s <= discrete_max_s and wav_bytes <= discrete_max_bytes:
        return "discrete"
    return "async"


def wav_header(frames: int, samplerate: int, channels: int = 1) -> bytes:
    """A canonical 44-byte PCM_16 WAV header for `frames` frames."""
    data_bytes = frames * channels * 2
    return b"RIFF" + struct.pack(
        "<I4s4sIHHIIHH4sI",
        36 + data_bytes,
        b"WAVE",
        b"fmt ",
        16,
        1,
        channels,
        samplerate,
        samplerate * channels * 2,
        channels * 2,
        16,
        b"data",
        data_bytes,
    )


def pcm16_mono_blocks(
    opener: Opener, channel: int | None, frames: int, block_frames: int = BLOCK_FRAMES
) -> Iterator[bytes]:
    """Exactly `frames` frames of int16 mono PCM: the downmix (`channel=None`) or one channel.

    Some decoders (MP3) report a frame count that differs slightly from what they decode;
    the output is padded with silence or cut so the declared WAV size always holds. A failed
    read of the source raises before the block it touched is yielded, and before any padding:
    a read error is never turned into silence.
    """
    import numpy as np  # local, like soundfile: only conversions need them
    import soundfile as sf

    remaining = frames
    with opener() as raw:
        try:
            with sf.SoundFile(raw) as f:
                for block in f.blocks(blocksize=block_frames, dtype="float32", always_2d=True):
                    raise_read_error(raw)
                    if remaining <= 0:
                        break
                    mono = block.mean(axis=1) if channel is None else block[:, channel]
                    mono = mono[:remaining]
                    remaining -= len(mono)
                    # NaN/inf samples (float WAVs can hold them) have no int16 value: silence, full scale.
                    mono = np.nan_to_num(mono, nan=0.0, posinf=1.0, neginf=-1.0)
                    yield (np.clip(mono, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
        except (sf.LibsndfileError, RuntimeError):
            raise_read_error(raw)
            raise
        raise_read_error(raw)
    while remaining > 0:
        pad = min(remaining, block_frames)
        remaining -= pad
        yield bytes(pad * 2)


class WavStream(io.RawIOBase):
    """A readable (not seekable) 16-bit mono WAV produced on the fly; `size` is exact."""

    def __init__(self, opener: Opener, info: AudioInfo, channel: int | None = None) -> None:
        super().__init__()
        self.size = wav_size(info)
        self._chunks: Iterator[bytes] = self._generate(opener, info, channel)
        self._pending = b""

    @staticmethod
    def _generate(opener: Opener, info: AudioInfo, channel: int | None) -> Iterator[bytes]:
        yield wav_header(info.frames, info.samplerate)
        yield from pcm16_mono_blocks(opener, channel, info.frames)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            try:
                self._pending = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        out = bytearray()
        while len(out) < size:
            chunk = bytearray(size - len(out))
            n = self.readinto(chunk)
            if n == 0:
                break
            out += chunk[:n]
        return bytes(out)


def wav_size(info: AudioInfo) -> int:
    """Bytes of the 16-bit mono WAV that `WavStream` produces for `info`."""
    return WAV_HEADER_BYTES + info.frames * 2
