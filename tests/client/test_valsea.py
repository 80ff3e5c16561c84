"""`ValseaClient` against a scripted server: streamed multipart submit, status, result, wait."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from requests_toolbelt.multipart import decoder

from tests.client.conftest import VALSEA_KEY, Sleeps, make_valsea
from tests.client.stubs import LateServer, Recorded, Reply, StubServer
from valence_client import (
    APIConnectionError,
    InvalidInputError,
    JobNotReadyError,
    MissingFileError,
    PredictionError,
    RateLimitError,
    ServerError,
    ValseaClient,
)
from valence_client.models import PROSODY_EXPRESSIONS

SUBMIT = r"/v1/prosody"
QUEUED = Reply(202, json={"job_id": "job-1", "status": "queued"})
SCORES = {"frustration": 0.1, "stress": 0.2, "politeness": 0.9, "hesitation": 0.3, "urgency": 0.4}


def form(request: Recorded) -> dict[str, tuple[str | None, bytes]]:
    """Multipart fields as name -> (filename, content)."""
    parsed = decoder.MultipartDecoder(request.body, request.header("Content-Type") or "")
    out = {}
    for part in parsed.parts:
        disposition = part.headers[b"Content-Disposition"].decode()
        name = disposition.split('name="', 1)[1].split('"', 1)[0]
        filename = (
            disposition.split('filename="', 1)[1].split('"', 1)[0] if "filename=" in disposition else None
        )
        out[name] = (filename, part.content)
    return out


def test_submit_streams_a_file_with_its_fields(
    tmp_path: Path, stub: StubServer, valsea: ValseaClient
) -> None:
    audio = tmp_path / "call.flac"
    audio.write_bytes(b"fLaC" + bytes(range(256)) * 40)
    stub.route("POST", SUBMIT, QUEUED)
    job = valsea.submit(str(audio), language="en-US", granularity="word", response_format="verbose_json")
    assert (job.job_id, job.status) == ("job-1", "queued")
    (sent,) = stub.requests
    assert sent.header("Authorization") == f"Bearer {VALSEA_KEY}"
    assert sent.header("Content-Length") == str(len(sent.body))
    fields = form(sent)
    assert fields["file"] == ("call.flac", audio.read_bytes())
    assert {k: v[1].decode() for k, v in fields.items() if k != "file"} == {
        "model": "valsea-prosody",
        "granularity": "word",
        "response_format": "verbose_json",
        "language": "en-US",
    }
    assert b"Content-Type: audio/flac" in sent.body


def test_submit_from_a_stream_with_a_size(stub: StubServer, valsea: ValseaClient) -> None:
    stub.route("POST", SUBMIT, QUEUED)
    valsea.submit(OneWay(b"RIFF" + b"\x01" * 5000), size=5004, file_name="object.wav")
    assert form(stub.requests[0])["file"] == ("object.wav", b"RIFF" + b"\x01" * 5000)


def test_submit_is_resent_after_429_with_the_same_body_and_key(
    tmp_path: Path, stub: StubServer, valsea: ValseaClient, sleeps: Sleeps
) -> None:
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"RIFF" + b"\x02" * 3000)
    stub.route(
        "POST",
        SUBMIT,
        [Reply(429, json={"error": "rate limit exceeded"}, headers={"Retry-After": "1"}), QUEUED],
    )
    valsea.submit(audio, idempotency_key="file-sha-abc")
    first, second = stub.requests
    assert form(first)["file"] == form(second)["file"] == ("a.wav", audio.read_bytes())
    assert first.header("Idempotency-Key") == second.header("Idempotency-Key") == "file-sha-abc"
    assert sleeps == [1.0]


class OneWay(io.RawIOBase):
    """Readable, not seekable, no fileno: like botocore's StreamingBody."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self._data.read(size)


def test_one_way_stream_is_resent_only_if_never_read() -> None:
    late = LateServer(lambda server: server.route("POST", SUBMIT, QUEUED))
    client = make_valsea(late.base_url, late)
    try:
        assert client.submit(OneWay(b"RIFF" + b"\x07" * 999), size=1003, file_name="s3.wav").job_id == "job-1"
    finally:
        client.close()
        late.close()
    assert late.server is not None
    (received,) = late.server.requests
    assert form(received)["file"] == ("s3.wav", b"RIFF" + b"\x07" * 999)


def test_one_way_stream_is_not_resent_after_429(stub: StubServer, valsea: ValseaClient) -> None:
    stub.route("POST", SUBMIT, [Reply(429, headers={"Retry-After": "1"}), QUEUED])
    with pytest.raises(RateLimitError):
        valsea.submit(OneWay(b"RIFF" + b"\x00" * 10), size=14)
    assert len(stub.requests) == 1


def test_seekable_stream_is_rewound_for_a_resend(stub: StubServer, valsea: ValseaClient) -> None:
    stub.route("POST", SUBMIT, [Reply(429, headers={"Retry-After": "0"}), QUEUED])
    data = io.BytesIO(b"head" + b"RIFF-payload")
    data.seek(4)
    valsea.submit(data, file_name="x.wav")
    assert [form(r)["file"][1] for r in stub.requests] == [b"RIFF-payload"] * 2


@pytest.mark.parametrize("failure", [Reply(500), Reply(drop=True)])
def test_submit_is_not_resent_once_the_server_may_have_started_a_job(
    tmp_path: Path, stub: StubServer, valsea: ValseaClient, failure: Reply
) -> None:
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"RIFF" + b"\x00" * 100)
    stub.route("POST", SUBMIT, [failure, QUEUED])
    with pytest.raises((ServerError, APIConnectionError)):
        valsea.submit(audio)
    assert len(stub.requests) == 1


def test_bad_submit_arguments_fail_before_any_call(
    tmp_path: Path, stub: StubServer, valsea: ValseaClient
) -> None:
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"RIFF")
    with pytest.raises(InvalidInputError, match="granularity"):
        valsea.submit(audio, granularity="paragraph")
    with pytest.raises(InvalidInputError, match="response_format"):
        valsea.submit(audio, response_format="xml")
    with pytest.raises(MissingFileError):
        valsea.submit(tmp_path / "missing.wav")
    assert stub.requests == []


def test_status_result_and_not_ready(stub: StubServer, valsea: ValseaClient) -> None:
    stub.route("GET", r"/v1/prosody/job-1", Reply(json={"job_id": "job-1", "status": "in_progress"}))
    stub.route(
        "GET",
        r"/v1/prosody/job-1/result",
        [
            Reply(409, json={"error": "job is in_progress, not completed", "status": "in_progress"}),
            Reply(
                json={
                    "job_id": "job-1",
                    "status": "completed",
                    "emotions": SCORES,
                    "raw_predictions": [
                        {"text": "hi", "time": {"begin": 0.5, "end": 1.5}, "emotions": [0.1] * 48}
                    ],
                }
            ),
        ],
    )
    assert valsea.status("job-1").status == "in_progress"
    with pytest.raises(JobNotReadyError):
        valsea.result("job-1")
    result = valsea.result("job-1")
    assert result.emotions.politeness == 0.9
    (utterance,) = result.raw_predictions
    assert (utterance.begin_s, utterance.end_s, len(utterance.expressions)) == (0.5, 1.5, 48)


def _result_with(*utterances: dict[str, object]) -> Reply:
    return Reply(
        json={"job_id": "j", "status": "completed", "emotions": SCORES, "raw_predictions": list(utterances)}
    )


def test_result_utterances_share_their_expression_names(stub: StubServer, valsea: ValseaClient) -> None:
    # Built utterance by utterance, with one copy of each name: a 9 h result has ~6,700 of them.
    named = [{"name": name, "score": 0.5} for name in PROSODY_EXPRESSIONS]
    utterance = {"text": "hi", "time": {"begin": 0.0, "end": 1.0}, "emotions": named}
    stub.route("GET", r"/v1/prosody/j/result", _result_with(utterance, utterance))
    first, second = valsea.result("j").raw_predictions
    assert list(first.expressions) == list(PROSODY_EXPRESSIONS)
    assert all(a is b for a, b in zip(first.expressions, second.expressions, strict=True))


def test_result_with_an_unreadable_utterance_is_a_prediction_error(
    stub: StubServer, valsea: ValseaClient
) -> None:
    bad = {"text": "hi", "time": {"begin": "soon", "end": 1.0}, "emotions": [0.1] * 48}
    stub.route("GET", r"/v1/prosody/j/result", _result_with(bad))
    with pytest.raises(PredictionError):
        valsea.result("j")


def test_wait_polls_until_completed(stub: StubServer, valsea: ValseaClient, sleeps: Sleeps) -> None:
    stub.route(
        "GET",
        r"/v1/prosody/j",
        [
            Reply(json={"job_id": "j", "status": "queued"}),
            Reply(json={"job_id": "j", "status": "in_progress"}, headers={"Retry-After": "5"}),
            Reply(json={"job_id": "j", "status": "completed"}),
        ],
    )
    stub.route(
        "GET", r"/v1/prosody/j/result", Reply(json={"job_id": "j", "status": "completed", "emotions": SCORES})
    )
    result = valsea.wait("j", initial_interval_s=1, max_interval_s=10)
    assert result.emotions.stress == 0.2
    assert sleeps == [1, 5]


def test_wait_raises_on_failed_job(stub: StubServer, valsea: ValseaClient) -> None:
    stub.route(
        "GET", r"/v1/prosody/j", Reply(json={"job_id": "j", "status": "failed", "error": "processing failed"})
    )
    with pytest.raises(PredictionError) as info:
        valsea.wait("j")
    assert (info.value.job_id, info.value.provider, info.value.retryable) == ("j", "valsea", False)


def test_from_settings_and_env(monkeypatch: pytest.MonkeyPatch, stub: StubServer, sleeps: Sleeps) -> None:
    from valence_pipeline.providers import valsea_client
    from valence_pipeline.settings import Settings

    client = valsea_client(
        Settings(valsea_api_key=VALSEA_KEY, valsea_api_base_url=stub.base_url, http_max_retries=1)
    )
    assert client.base_url == stub.base_url and client.transport.retry.max_retries == 1
    monkeypatch.setenv("VALSEA_API_KEY", VALSEA_KEY)
    monkeypatch.setenv("VALSEA_API_BASE_URL", stub.base_url)
    assert make_valsea(None, sleeps, api_key=None).base_url == stub.base_url  # type: ignore[arg-type]
