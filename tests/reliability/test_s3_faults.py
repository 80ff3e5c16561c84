"""S3 faults: a fault-injecting proxy (`localstack.netproxy`) in front of SeaweedFS resets
connections in the middle of GET bodies and refuses connections for a while.

Every read of a recording (ranged reads, probe, hash, conversion, the bytes a provider gets)
either gives exactly the right bytes or raises the retryable `SourceReadError`: never wrong or
short audio, never a rejection. An object overwritten after discovery raises
`ObjectChangedError` (a new version), whichever read notices it.

Runs on its own: `pytest tests/reliability/test_s3_faults.py -s` prints what the proxy did.
"""

from __future__ import annotations

import hashlib
import io
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from localstack.netproxy import NetProxy
from localstack.sample_data import SampleRecording, render
from localstack.seaweedfs import SeaweedFS
from valence_pipeline.audio import AudioRejected, WavStream, probe
from valence_pipeline.preflight import run_preflight, sha256_of
from valence_pipeline.s3 import (
    ObjectChangedError,
    ReadPolicy,
    S3RangeReader,
    S3Stream,
    SourceReadError,
    head_version,
    read_range,
)
from valence_pipeline.settings import Settings

# Every connection is cut in these tests, some before a whole chunk (READ_CHUNK) gets through:
# more attempts than the default so that a run of such cuts does not end a read by chance.
FAST = ReadPolicy(attempts=8, backoff_s=0.01, max_backoff_s=0.05)
GIVE_UP = ReadPolicy(attempts=2, backoff_s=0.01)
STEREO = SampleRecording("calls/stereo-25s.wav", 25, channels=2)
FLAC = SampleRecording("calls/meeting-20s.flac", 20, fmt="FLAC")

# soundfile reports the exceptions its read callback swallows as "unraisable": expected here,
# since raising them afterwards is exactly what is being tested.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture
def proxy(seaweedfs: SeaweedFS) -> Iterator[NetProxy]:
    endpoint = urlparse(seaweedfs.endpoint_url)
    with NetProxy((endpoint.hostname or "127.0.0.1", endpoint.port or 80), seed=11) as p:
        yield p
    print(f"\nproxy: {dict(p.stats)}")


def client_via(seaweedfs: SeaweedFS, proxy: NetProxy) -> Any:
    """An S3 client through the proxy; botocore retries a failed request once (the pipeline's
    client retries more: kept short here so that persistent faults fail fast)."""
    import boto3
    from botocore.config import Config

    kwargs = {**seaweedfs.boto3_kwargs(), "endpoint_url": proxy.url}
    config = Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=2, read_timeout=5)
    return boto3.client("s3", config=config, **kwargs)


@pytest.fixture
def plain_bucket(s3_client: Any) -> str:
    """An unversioned bucket (SeaweedFS's default and the common case)."""
    name = f"u-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    return name


def stored(s3_client: Any, bucket: str, sample: SampleRecording, seed: int = 0) -> bytes:
    body = render(sample, seed=seed)
    s3_client.put_object(Bucket=bucket, Key=sample.key, Body=body)
    return body


def converted(source: Any, info: Any, channel: int | None = None) -> bytes:
    return WavStream(lambda: source, info, channel).read()


def test_reads_resume_through_mid_body_resets_byte_exact(
    seaweedfs: SeaweedFS, s3_client: Any, plain_bucket: str, proxy: NetProxy
) -> None:
    body = stored(s3_client, plain_bucket, STEREO)
    s3 = client_via(seaweedfs, proxy)
    obj = head_version(s3, plain_bucket, STEREO.key)
    proxy.reset_responses(probability=1.0, after_bytes=(200 * 1024, 1024 * 1024))  # every request

    assert bytes(read_range(s3, obj, 1000, 1_000_000, FAST)) == body[1000:1_001_000]
    assert sha256_of(s3, obj) == hashlib.sha256(body).hexdigest()
    with S3Stream(s3, obj, FAST) as stream:
        assert stream.read() == body
    info = probe(S3RangeReader(s3, obj, window=64 * 1024, policy=FAST))
    assert info == probe(io.BytesIO(body))
    # The conversion a provider gets: byte for byte what the same file converts to locally.
    expected = converted(io.BytesIO(body), info)
    assert converted(S3RangeReader(s3, obj, window=256 * 1024, policy=FAST), info) == expected
    assert converted(S3RangeReader(s3, obj, window=256 * 1024, policy=FAST), info, 1) == converted(
        io.BytesIO(body), info, 1
    )
    print(f"\nresets survived: {proxy.stats['resets']}")
    assert proxy.stats["resets"] >= 5


def test_flac_decoding_resumes_byte_exact(
    seaweedfs: SeaweedFS, s3_client: Any, plain_bucket: str, proxy: NetProxy
) -> None:
    body = stored(s3_client, plain_bucket, FLAC)
    s3 = client_via(seaweedfs, proxy)
    obj = head_version(s3, plain_bucket, FLAC.key)
    proxy.reset_responses(probability=0.3, after_bytes=(1024, 30 * 1024))  # inside a 32 KiB answer
    info = probe(S3RangeReader(s3, obj, window=32 * 1024, policy=FAST))
    expected = converted(io.BytesIO(body), info)
    assert converted(S3RangeReader(s3, obj, window=32 * 1024, policy=FAST), info) == expected
    assert proxy.stats["resets"] > 0


def test_a_read_that_keeps_failing_raises_the_retryable_error_never_audio(
    seaweedfs: SeaweedFS, s3_client: Any, plain_bucket: str, proxy: NetProxy
) -> None:
    body = stored(s3_client, plain_bucket, STEREO)
    s3 = client_via(seaweedfs, proxy)
    obj = head_version(s3, plain_bucket, STEREO.key)
    info = probe(io.BytesIO(body))
    expected = converted(io.BytesIO(body), info)
    proxy.reset_responses(probability=1.0, after_bytes=(0, 0))  # nothing gets through any more

    with pytest.raises(SourceReadError):
        read_range(s3, obj, 0, 100_000, GIVE_UP)
    with pytest.raises(SourceReadError):
        sha256_of(s3, obj)
    with pytest.raises(SourceReadError):  # not AudioRejected("unreadable")
        probe(S3RangeReader(s3, obj, policy=GIVE_UP))
    with pytest.raises(SourceReadError):  # not a rejection either
        run_preflight(s3, obj, Settings())

    # Broken half-way through a conversion: what came out before the error is a prefix of the
    # right output; no block of wrong or padded audio is ever produced.
    proxy.reset_responses(probability=0.0)
    stream = WavStream(lambda: S3RangeReader(s3, obj, window=256 * 1024, policy=GIVE_UP), info)
    produced = stream.read(500_000)
    proxy.reset_responses(probability=1.0, after_bytes=(0, 0))
    with pytest.raises(SourceReadError):
        while chunk := stream.read(64 * 1024):
            produced += chunk
    assert len(produced) < len(expected)
    assert expected.startswith(produced)


def test_refused_connections_for_a_while_are_waited_out(
    seaweedfs: SeaweedFS, s3_client: Any, plain_bucket: str, proxy: NetProxy
) -> None:
    body = stored(s3_client, plain_bucket, STEREO)
    s3 = client_via(seaweedfs, proxy)
    obj = head_version(s3, plain_bucket, STEREO.key)
    with S3Stream(s3, obj, ReadPolicy(attempts=6, backoff_s=0.2, max_backoff_s=1.0)) as stream:
        head = stream.read(500_000)
        proxy.refuse_for(1.0)  # the open connection is reset and the port closed for a second
        rest = stream.read()
    assert head + rest == body
    assert proxy.stats["refusals"] == 1


def test_an_object_overwritten_after_discovery_is_a_new_version_not_a_failure(
    s3_client: Any, plain_bucket: str
) -> None:
    stored(s3_client, plain_bucket, STEREO, seed=1)
    obj = head_version(s3_client, plain_bucket, STEREO.key)
    stored(s3_client, plain_bucket, STEREO, seed=2)  # same key, other bytes, same size

    with pytest.raises(ObjectChangedError):
        read_range(s3_client, obj, 0, 1000)
    with pytest.raises(ObjectChangedError):
        sha256_of(s3_client, obj)
    with pytest.raises(ObjectChangedError):
        probe(S3RangeReader(s3_client, obj))
    with pytest.raises(ObjectChangedError):
        run_preflight(s3_client, obj, Settings())
    with pytest.raises(ObjectChangedError):
        converted(S3RangeReader(s3_client, obj), probe(io.BytesIO(render(STEREO, seed=1))))


def test_the_store_honours_if_match(s3_client: Any, plain_bucket: str) -> None:
    """Checked on SeaweedFS itself: a stale If-Match gets 412 (the ETag check in `open_body` is
    the fallback for stores that ignore it)."""
    from botocore.exceptions import ClientError

    stored(s3_client, plain_bucket, STEREO)
    etag = head_version(s3_client, plain_bucket, STEREO.key).etag
    ok = s3_client.get_object(Bucket=plain_bucket, Key=STEREO.key, Range="bytes=0-9", IfMatch=f'"{etag}"')
    assert len(ok["Body"].read()) == 10
    with pytest.raises(ClientError) as caught:
        s3_client.get_object(Bucket=plain_bucket, Key=STEREO.key, Range="bytes=0-9", IfMatch='"0123"')
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412


def test_rejections_stay_rejections(s3_client: Any, plain_bucket: str) -> None:
    """The fix must not turn real garbage into retries: a corrupt file is still rejected."""
    garbled = SampleRecording("calls/garbled.wav", 10, corrupt=True)
    stored(s3_client, plain_bucket, garbled)
    obj = head_version(s3_client, plain_bucket, garbled.key)
    with pytest.raises(AudioRejected):
        probe(S3RangeReader(s3_client, obj))
    assert run_preflight(s3_client, obj, Settings()).reject_code == "unreadable"


# --------------------------------------------------------------------------- the pipeline

PIPELINE_SAMPLES: tuple[SampleRecording, ...] = (
    SampleRecording("in/clip-7s.wav", 7),
    SampleRecording("in/call-45s.wav", 45),
    SampleRecording("in/call-90s.wav", 90, samplerate=44100),
    SampleRecording("in/stereo-40s.wav", 40, channels=2),
    SampleRecording("in/meeting-30s.flac", 30, fmt="FLAC"),
    SampleRecording("in/stereo-25s.wav", 25, channels=2, samplerate=22050),
)


def expected_payloads(body: bytes) -> dict[str, str]:
    """SHA-256 of what each provider must receive: Valsea the original, Valence mono PCM16."""
    info = probe(io.BytesIO(body))
    original = hashlib.sha256(body).hexdigest()
    valence = (
        original if info.is_pcm16_mono_wav else hashlib.sha256(converted(io.BytesIO(body), info)).hexdigest()
    )
    return {"valsea": original, "valence": valence}


@pytest.mark.usefixtures("prefect_harness")
def test_nightly_run_through_s3_faults_is_byte_exact_or_retryable(
    monkeypatch: pytest.MonkeyPatch,
    seaweedfs: SeaweedFS,
    s3_client: Any,
    plain_bucket: str,
    proxy: NetProxy,
    emu: Any,
    tmp_path: Path,
) -> None:
    """The whole night through the proxy: a third of the connections reset mid-body, and S3
    refused for a second while the run is under way. Outcomes only (statuses, the ledger)."""
    import threading

    from tests.pipeline.helpers import configure, statuses

    bodies = {s.key: stored(s3_client, plain_bucket, s, seed=i) for i, s in enumerate(PIPELINE_SAMPLES)}
    expected = {key: expected_payloads(body) for key, body in bodies.items()}
    database_url = f"sqlite:///{tmp_path / 'results.db'}"
    configure(monkeypatch, seaweedfs, emu, database_url, tmp_path / "parquet", AWS_ENDPOINT_URL=proxy.url)
    proxy.reset_responses(probability=0.35, after_bytes=(64 * 1024, 1024 * 1024))
    outage = threading.Timer(1.5, proxy.refuse_for, args=(1.0,))
    outage.start()
    try:
        from flows.ingest import nightly_ingest, run_to_result
        from valence_pipeline.runtime import reset_runtime

        reset_runtime()
        run_to_result(nightly_ingest, source=f"s3://{plain_bucket}/in/", trigger="manual")
    finally:
        outage.cancel()
        outage.join()

    final = statuses(database_url)
    billed = emu.ledger()["entries"]
    received = {(e["kind"].split("_")[0], e["sha256"]) for e in billed}
    right = {(provider, sha) for payloads in expected.values() for provider, sha in payloads.items()}
    print(
        f"\nproxy: {dict(proxy.stats)}; recordings: "
        f"{ {k: s for k, (s, _) in sorted(final.items())} }; paid: {len(billed)}"
    )
    assert set(final) == set(bodies)
    # Nothing the providers received (and billed) is anything but the exact expected bytes.
    assert received <= right, received - right
    for key, (status, reason) in final.items():
        assert status in {"completed", "failed"}, (key, status, reason)  # never rejected
        if status == "completed":
            assert {(p, sha) for p, sha in expected[key].items()} <= received, key
        else:
            assert reason, key
    assert proxy.stats["resets"] > 0


def test_discovered_etags_pin_reads_of_large_unversioned_objects(s3_client: Any, plain_bucket: str) -> None:
    """SeaweedFS lists a per-chunk ETag for objects over 8 MB in ListObjectVersions; discovery
    must record the ETag that reads can be pinned to, or every large file would look changed."""
    import os

    from valence_pipeline.s3 import list_latest_versions

    body = os.urandom(9_000_000)
    s3_client.put_object(Bucket=plain_bucket, Key="big/object.wav", Body=body)
    (obj,) = list_latest_versions(s3_client, plain_bucket, "big/")
    assert obj.etag == head_version(s3_client, plain_bucket, "big/object.wav").etag
    assert bytes(read_range(s3_client, obj, 0, 100)) == body[:100]
