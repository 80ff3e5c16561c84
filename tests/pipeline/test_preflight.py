"""Preflight against a real S3 (SeaweedFS): verdicts from ranged reads, before any API call."""

from __future__ import annotations

import hashlib
import io
from typing import Any

import pytest
import soundfile as sf

from localstack.sample_data import SampleRecording, render
from valence_pipeline.audio import WavStream, probe
from valence_pipeline.preflight import run_preflight
from valence_pipeline.s3 import S3RangeReader, head_version, list_latest_versions
from valence_pipeline.settings import Settings


def put(s3: Any, bucket: str, key: str, body: bytes) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=body)


@pytest.mark.parametrize(
    ("sample", "route"),
    [
        (SampleRecording("a/eight.wav", 8), "discrete"),
        (SampleRecording("a/long.wav", 40), "async"),
        (SampleRecording("a/stereo.wav", 12, channels=2), "async"),
        (SampleRecording("a/meeting.flac", 15, fmt="FLAC"), "async"),
        (SampleRecording("a/interview.ogg", 6, fmt="OGG"), "discrete"),
        (SampleRecording("a/podcast.mp3", 12, fmt="MP3"), "async"),
    ],
)
def test_accepted_audio_is_routed_and_hashed(
    s3_client: Any, bucket: str, sample: SampleRecording, route: str
) -> None:
    body = render(sample, seed=3)
    put(s3_client, bucket, sample.key, body)
    obj = head_version(s3_client, bucket, sample.key)
    verdict = run_preflight(s3_client, obj, Settings())
    assert verdict.accepted, verdict.reason
    assert verdict.route == route
    assert verdict.sha256 == hashlib.sha256(body).hexdigest()
    assert verdict.info is not None
    assert verdict.info.channels == sample.channels
    assert abs(verdict.info.duration_s - sample.duration_s) < 0.2


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", "empty"),
        (b"RIFF\x00\x00garbage" * 100, "unreadable"),
        (render(SampleRecording("x.wav", 2), seed=1), "too_short"),
    ],
)
def test_bad_audio_is_rejected_with_reason(s3_client: Any, bucket: str, body: bytes, code: str) -> None:
    put(s3_client, bucket, "bad/x.wav", body)
    verdict = run_preflight(s3_client, head_version(s3_client, bucket, "bad/x.wav"), Settings())
    assert not verdict.accepted
    assert verdict.reject_code == code
    assert verdict.reason and verdict.reason.startswith(code)


def test_too_large_is_rejected_from_the_listing_without_reading(s3_client: Any, bucket: str) -> None:
    put(s3_client, bucket, "big.wav", render(SampleRecording("big.wav", 6), seed=2))
    obj = head_version(s3_client, bucket, "big.wav")
    verdict = run_preflight(s3_client, obj, Settings(max_file_bytes=1000))
    assert verdict.reject_code == "too_large"


def test_probe_reads_only_headers_through_ranges(s3_client: Any, bucket: str) -> None:
    body = render(SampleRecording("h.wav", 120), seed=4)
    put(s3_client, bucket, "h.wav", body)
    reader = S3RangeReader(s3_client, head_version(s3_client, bucket, "h.wav"), window=64 * 1024)
    info = probe(reader)
    assert info.frames == 120 * 16000
    assert reader.bytes_fetched < len(body) / 10


def test_listing_pins_versions_and_reader_reads_that_version(s3_client: Any, bucket: str) -> None:
    put(s3_client, bucket, "v/x.wav", b"first version")
    first = next(list_latest_versions(s3_client, bucket, "v/"))
    put(s3_client, bucket, "v/x.wav", b"second")
    latest = list(list_latest_versions(s3_client, bucket, "v/"))
    assert len(latest) == 1 and latest[0].version_id != first.version_id
    assert S3RangeReader(s3_client, first).read() == b"first version"


@pytest.mark.parametrize("channel", [None, 0, 1])
def test_wav_stream_converts_stereo_flac_to_mono_pcm16(channel: int | None) -> None:
    body = render(SampleRecording("s.flac", 7, channels=2, fmt="FLAC"), seed=5)
    info = probe(io.BytesIO(body))
    stream = WavStream(lambda: io.BytesIO(body), info, channel)
    out = stream.read()
    assert len(out) == stream.size
    back, sr = sf.read(io.BytesIO(out), dtype="float32", always_2d=True)
    source, _ = sf.read(io.BytesIO(body), dtype="float32", always_2d=True)
    expected = source.mean(axis=1) if channel is None else source[:, channel]
    assert sr == info.samplerate and back.shape == (info.frames, 1)
    assert abs(back[:, 0] - expected).max() < 1e-3
