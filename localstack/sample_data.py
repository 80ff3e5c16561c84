"""Generated recordings for the demo, the tests and the benchmarks.

The audio is speech-like (a voiced fundamental with harmonics, syllable-rate amplitude
modulation, pauses and breath noise) so that the emulator's energy/pitch features vary over
time; it is written block by block, so a long file never sits in memory.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

BLOCK_S = 5.0


def speech_like_blocks(
    duration_s: float, samplerate: int = 16000, channels: int = 1, seed: int = 0, block_s: float = BLOCK_S
) -> Iterator[np.ndarray]:
    """Float32 blocks of shape (frames, channels) adding up to `duration_s` seconds.

    Each channel is its own "speaker" (different pitch); in a stereo call they take turns.
    """
    rng = np.random.default_rng(seed)
    total = round(duration_s * samplerate)
    base_pitch = rng.uniform(95.0, 230.0, size=channels)
    done = 0
    while done < total:
        n = min(int(block_s * samplerate), total - done)
        t = (done + np.arange(n)) / samplerate
        block = np.zeros((n, channels), dtype=np.float32)
        for ch in range(channels):
            # Pitch and loudness drift slowly, so segments differ (mood changes in a call).
            drift = 1.0 + 0.25 * np.sin(2 * np.pi * t / (23.0 + 7 * ch) + rng.uniform(0, 6.28))
            f0 = base_pitch[ch] * drift
            phase = 2 * np.pi * np.cumsum(f0) / samplerate
            voiced = sum(np.sin(k * phase) / k for k in range(1, 6))
            syllables = np.clip(np.sin(2 * np.pi * 4.0 * t + ch), 0, None) ** 2
            turn = 0.5 * (1 + np.sign(np.sin(2 * np.pi * t / 8.0 + np.pi * ch))) if channels > 1 else 1.0
            loudness = 0.15 + 0.25 * (0.5 + 0.5 * np.sin(2 * np.pi * t / 31.0 + ch))
            noise = rng.normal(0, 0.01, n)
            block[:, ch] = (loudness * syllables * turn * voiced * 0.4 + noise).astype(np.float32)
        done += n
        yield block


def write_audio(
    path: Path | io.BytesIO,
    duration_s: float,
    *,
    samplerate: int = 16000,
    channels: int = 1,
    fmt: str = "WAV",
    subtype: str | None = None,
    seed: int = 0,
) -> None:
    """Write a speech-like recording in any soundfile format (WAV, FLAC, OGG, MP3)."""
    subtype = subtype or {"WAV": "PCM_16", "FLAC": "PCM_16", "OGG": "VORBIS", "MP3": "MPEG_LAYER_III"}[fmt]
    with sf.SoundFile(path, "w", samplerate=samplerate, channels=channels, format=fmt, subtype=subtype) as f:
        for block in speech_like_blocks(duration_s, samplerate, channels, seed):
            f.write(block)


@dataclass(frozen=True)
class SampleRecording:
    key: str
    duration_s: float
    channels: int = 1
    fmt: str = "WAV"
    samplerate: int = 16000
    corrupt: bool = False
    expect: str = "completed"
    """What the pipeline should end with: 'completed' or 'rejected:<reason>'."""


DEMO_SET: tuple[SampleRecording, ...] = (
    SampleRecording("calls/2026-11-20/greeting-5s.wav", 5),
    SampleRecording("calls/2026-11-20/short-question-8s.wav", 8, samplerate=44100),
    SampleRecording("calls/2026-11-20/voicemail-30s.wav", 30),
    SampleRecording("calls/2026-11-20/support-call-1m.wav", 60),
    SampleRecording("calls/2026-11-20/billing-call-2m.wav", 120, samplerate=8000),
    SampleRecording("calls/2026-11-20/sales-call-stereo-3m.wav", 180, channels=2),
    SampleRecording("calls/2026-11-20/escalation-5m.wav", 300),
    SampleRecording("meetings/2026-11-20/standup-10m.wav", 600),
    SampleRecording("meetings/2026-11-20/retro-90s.flac", 90, fmt="FLAC"),
    SampleRecording("meetings/2026-11-20/interview-45s.ogg", 45, fmt="OGG"),
    SampleRecording("calls/2026-11-20/hangup-2s.wav", 2, expect="rejected:too_short"),
    SampleRecording("calls/2026-11-20/garbled.wav", 20, corrupt=True, expect="rejected:unreadable"),
)


def render(sample: SampleRecording, seed: int) -> bytes:
    """The bytes of one sample recording (corrupt ones are noise with an audio suffix)."""
    if sample.corrupt:
        return np.random.default_rng(seed).bytes(64 * 1024)
    buf = io.BytesIO()
    buf.name = f"x.{sample.fmt.lower()}"
    write_audio(
        buf,
        sample.duration_s,
        samplerate=sample.samplerate,
        channels=sample.channels,
        fmt=sample.fmt,
        seed=seed,
    )
    return buf.getvalue()


def upload_samples(
    s3: Any, bucket: str, samples: tuple[SampleRecording, ...] = DEMO_SET, prefix: str = ""
) -> list[str]:
    """Upload the sample set (creating the bucket if needed); returns the s3:// URIs."""
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        s3.create_bucket(Bucket=bucket)
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    uris = []
    for i, sample in enumerate(samples):
        key = prefix + sample.key
        s3.put_object(Bucket=bucket, Key=key, Body=render(sample, seed=i))
        uris.append(f"s3://{bucket}/{key}")
    return uris


def write_large_wav(path: Path, size_bytes: int, samplerate: int = 16000, channels: int = 1) -> None:
    """A PCM_16 WAV of at most `size_bytes` (for memory tests): speech-like blocks repeated.

    With `channels=2` it is a two-speaker call (interleaved frames), the shape that makes the
    pipeline downmix on the fly.
    """
    frame_bytes = 2 * channels
    frames = (size_bytes - 44) // frame_bytes
    block = next(speech_like_blocks(BLOCK_S, samplerate, channels, seed=7))
    pcm = (block * 32767).astype("<i2").tobytes()  # C order: frames interleaved
    with path.open("wb") as f:
        from valence_pipeline.audio import wav_header

        f.write(wav_header(frames, samplerate, channels))
        remaining = frames * frame_bytes
        while remaining > 0:
            chunk = pcm[: min(len(pcm), remaining)]
            f.write(chunk)
            remaining -= len(chunk)
        f.flush()
        os.fsync(f.fileno())
