"""`ValenceClient`'s SDK surface: bad input, both documented answer shapes, timeline helpers,
rate-limit calls, construction from settings and environment."""

from __future__ import annotations

import inspect
import io
from pathlib import Path
from typing import Any

import pytest
import valenceai

from tests.client.conftest import VALENCE_KEY, Sleeps, make_valence
from tests.client.stubs import Reply, StubServer
from valence_client import (
    AuthenticationError,
    FileSizeLimitExceededError,
    InvalidInputError,
    InvalidRequestError,
    MissingFileError,
    PredictionError,
    ValenceClient,
    ValenceSDKException,
    WindowRateLimiter,
)
from valence_client import errors as our_errors
from valence_client.models import AsyncStatus, EmotionSegment
from valence_pipeline.providers import valence_client
from valence_pipeline.settings import Settings

STATUS = r"/v1/asynch/emotion/status/(.+)"
TIMELINE_000 = [
    {
        "timestamp": 2.5,
        "start_time": 0.0,
        "end_time": 5.0,
        "emotion": "happy",
        "confidence": 0.8,
        "all_predictions": {"happy": 0.8, "sad": 0.2},
    },
    {"timestamp": 7.5, "start_time": 5.0, "end_time": 10.0, "emotion": "sad", "confidence": 0.6},
    {"timestamp": 12.5, "start_time": 10.0, "end_time": 15.0, "emotion": "happy", "confidence": 0.7},
]
TIMELINE_002 = [
    {"t": "00:00", "emotion": "neutral", "confidence": 0.72},
    {"t": "00:05", "emotion": "angry", "confidence": 0.55},
    {"t": "01:00:05", "emotion": "neutral", "confidence": 0.61},
]


def wav_file(tmp_path: Path, size: int = 2048) -> Path:
    path = tmp_path / "clip.wav"
    path.write_bytes(b"RIFF" + bytes(size - 4))
    return path


# --------------------------------------------------------------------------- SDK surface


def test_constructor_and_namespaces_match_the_public_sdk() -> None:
    ours = inspect.signature(ValenceClient.__init__).parameters
    theirs = inspect.signature(valenceai.ValenceClient.__init__).parameters
    assert list(theirs) == list(ours)[: len(theirs)]
    for name in theirs:
        assert ours[name].default == theirs[name].default, name
    client = ValenceClient(api_key=VALENCE_KEY, base_url="http://127.0.0.1:9", show_progress=False)
    sdk = valenceai.ValenceClient(api_key=VALENCE_KEY, base_url="http://127.0.0.1:9")
    for namespace in ("discrete", "asynch", "rate_limit"):
        public = {n for n in dir(getattr(sdk, namespace)) if not n.startswith("_")} - {"headers", "base_url"}
        assert public <= set(dir(getattr(client, namespace))), namespace


def test_sdk_exception_names_are_all_there() -> None:
    for name in valenceai.__all__:
        if name != "ValenceClient":
            assert issubclass(getattr(our_errors, name), ValenceSDKException), name


# --------------------------------------------------------------------------- bad input


def test_bad_input_fails_before_any_call(tmp_path: Path, stub: StubServer, valence: ValenceClient) -> None:
    clip = wav_file(tmp_path)
    with pytest.raises(ValueError, match="not both"):
        valence.discrete.emotions(file_path=str(clip), audio_array=[0.1])
    with pytest.raises(ValueError, match="Must provide"):
        valence.discrete.emotions()
    with pytest.raises(ValueError, match="unknown model") as info:
        valence.discrete.emotions(file_path=str(clip), model="9emotions")
    assert isinstance(info.value, InvalidRequestError)
    with pytest.raises(MissingFileError) as missing:
        valence.discrete.emotions(file_path=str(tmp_path / "absent.wav"))
    assert isinstance(missing.value, FileNotFoundError)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(InvalidInputError, match="empty"):
        valence.discrete.emotions(file_path=str(empty))
    with pytest.raises(InvalidInputError, match="empty"):
        valence.discrete.emotions(audio_array=[])
    with pytest.raises(InvalidInputError, match="numbers"):
        valence.discrete.emotions(audio_array=[[0.1, 0.2]])  # type: ignore[list-item]
    assert stub.requests == []


def test_discrete_file_over_6_mb_is_refused_locally(
    tmp_path: Path, stub: StubServer, valence: ValenceClient
) -> None:
    big = tmp_path / "big.wav"
    with big.open("wb") as f:
        f.truncate(7 * 1024 * 1024)
    with pytest.raises(FileSizeLimitExceededError) as info:
        valence.discrete.emotions(file_path=str(big))
    assert info.value.max_size_mb == 6.0 and info.value.actual_size_mb == pytest.approx(7.0)
    with pytest.raises(FileSizeLimitExceededError):
        valence.discrete.emotions(file=big.open("rb"))
    assert stub.requests == []


# --------------------------------------------------------------------------- discrete


@pytest.mark.parametrize(
    "answer",
    [
        {"main_emotion": "happy", "confidence": 0.77, "all_predictions": {"happy": 0.77, "sad": 0.23}},
        {"emotions": {"happy": 0.77, "sad": 0.23}, "dominant_emotion": "happy"},
    ],
    ids=["002", "000"],
)
def test_both_discrete_shapes(
    tmp_path: Path, stub: StubServer, valence: ValenceClient, answer: dict[str, Any]
) -> None:
    stub.route("POST", r"/v1/discrete/emotion", Reply(json=answer))
    result = valence.discrete.emotions(file_path=str(wav_file(tmp_path)), model="7emotions")
    assert (result.main_emotion, result.confidence, result.all_predictions) == (
        "happy",
        0.77,
        {"happy": 0.77, "sad": 0.23},
    )
    (sent,) = stub.requests
    assert sent.query == {"model": "7emotions"}
    assert b'name="file"; filename="clip.wav"' in sent.body


def test_discrete_from_an_open_stream(stub: StubServer, valence: ValenceClient) -> None:
    stub.route("POST", r"/v1/discrete/emotion", Reply(json={"main_emotion": "sad", "confidence": 0.5}))
    result = valence.discrete.emotions(file=io.BytesIO(b"RIFFdata"), file_name="s3-object.wav")
    assert result.main_emotion == "sad"
    assert b'filename="s3-object.wav"' in stub.requests[0].body and b"RIFFdata" in stub.requests[0].body


def test_unreadable_answer_is_a_prediction_error(stub: StubServer, valence: ValenceClient) -> None:
    stub.route("POST", r"/v1/discrete/emotion", Reply(json={"unexpected": True}))
    with pytest.raises(PredictionError, match="unexpected discrete answer"):
        valence.discrete.emotions(audio_array=[0.0])


# --------------------------------------------------------------------------- async status and timeline


@pytest.mark.parametrize("timeline", [TIMELINE_000, TIMELINE_002], ids=["000", "002"])
def test_both_timeline_shapes(
    stub: StubServer, valence: ValenceClient, timeline: list[dict[str, Any]]
) -> None:
    stub.route("GET", STATUS, Reply(json={"status": "completed", "emotions": timeline}))
    status = valence.asynch.status("r-1")
    assert status.request_id == "r-1" and status.status == "completed"
    assert all(isinstance(s, EmotionSegment) for s in status.emotions)
    first, second, third = status.emotions
    if timeline is TIMELINE_000:
        assert (first.start_s, first.end_s, first.all_predictions) == (0.0, 5.0, {"happy": 0.8, "sad": 0.2})
        assert (second.emotion, second.all_predictions) == ("sad", None)
    else:
        assert (first.start_s, first.end_s, first.emotion) == (0.0, 5.0, "neutral")
        assert (second.start_s, third.start_s, third.end_s) == (5.0, 3605.0, 3610.0)


def test_comprehensive_output_is_asked_for(stub: StubServer, sleeps: Sleeps) -> None:
    stub.route("GET", STATUS, Reply(json={"status": "processing"}))
    with make_valence(stub.base_url, sleeps, comprehensive_output=True) as client:
        client.asynch.status("r")
    assert stub.requests[0].query == {"comprehensive_output": "true"}


def test_timeline_helpers(stub: StubServer, valence: ValenceClient) -> None:
    stub.route("GET", STATUS, Reply(json={"status": "completed", "emotions": TIMELINE_000}))
    assert [s.emotion for s in valence.asynch.get_timeline("r")] == ["happy", "sad", "happy"]
    assert valence.asynch.get_emotion_at_time("r", 5.0).emotion == "sad"  # type: ignore[union-attr]
    assert valence.asynch.get_emotion_at_time("r", 99.0) is None
    assert valence.asynch.emotion_counts("r") == {"happy": 2, "sad": 1}
    assert valence.asynch.get_dominant_emotion("r") == "happy" == valence.asynch.majority_emotion("r")
    calls = len(stub.requests)
    done = AsyncStatus(
        status="completed", emotions=[EmotionSegment(start_s=0, end_s=5, emotion="calm", confidence=1)]
    )
    assert valence.asynch.majority_emotion(done) == "calm" and len(stub.requests) == calls


def test_helpers_on_a_job_that_is_not_done(stub: StubServer, valence: ValenceClient) -> None:
    stub.route("GET", STATUS, Reply(json={"status": "processing"}))
    with pytest.raises(PredictionError) as info:
        valence.asynch.get_timeline("r-2")
    assert info.value.request_id == "r-2" and info.value.retryable


def test_emotions_polls_at_the_sdk_interval(stub: StubServer, valence: ValenceClient, sleeps: Sleeps) -> None:
    stub.route(
        "GET",
        STATUS,
        [
            Reply(json={"status": "initiated"}),
            Reply(json={"status": "upload_completed"}),
            Reply(json={"status": "processing"}),
            Reply(json={"status": "completed", "emotions": TIMELINE_002}),
        ],
    )
    status = valence.asynch.emotions("r", max_attempts=5, interval_seconds=3)
    assert status.status == "completed" and sleeps == [3, 3, 3]


def test_emotions_gives_up_after_max_attempts(
    stub: StubServer, valence: ValenceClient, sleeps: Sleeps
) -> None:
    stub.route("GET", STATUS, Reply(json={"status": "processing"}))
    with pytest.raises(PredictionError, match="after 3 polls"):
        valence.asynch.emotions("r", max_attempts=3, interval_seconds=1)
    assert len(stub.requests) == 3 and sleeps == [1, 1]


def test_failed_job_raises_prediction_error(stub: StubServer, valence: ValenceClient) -> None:
    stub.route("GET", STATUS, Reply(json={"status": "failed"}))
    with pytest.raises(PredictionError, match="failed") as info:
        valence.asynch.wait("r-3")
    assert info.value.request_id == "r-3" and not info.value.retryable


def test_wait_grows_the_interval_up_to_a_cap_and_honours_retry_after(
    stub: StubServer, sleeps: Sleeps
) -> None:
    pending = Reply(json={"status": "processing"})
    stub.route(
        "GET",
        STATUS,
        [
            pending,
            pending,
            Reply(json={"status": "processing"}, headers={"Retry-After": "7"}),
            pending,
            pending,
            Reply(json={"status": "completed", "emotions": []}),
        ],
    )
    with make_valence(stub.base_url, sleeps) as client:
        client.asynch.wait("r", initial_interval_s=2, max_interval_s=4, deadline_s=None)
    assert sleeps == [2, 3, 7, 4, 4]


def test_wait_stops_at_the_deadline(stub: StubServer, sleeps: Sleeps) -> None:
    stub.route("GET", STATUS, Reply(json={"status": "processing"}))
    with (
        make_valence(stub.base_url, sleeps, clock=sleeps.clock) as client,
        pytest.raises(PredictionError) as info,
    ):
        client.asynch.wait("r", initial_interval_s=4, max_interval_s=4, deadline_s=10)
    assert sleeps == [4, 4, 2] and info.value.retryable


# --------------------------------------------------------------------------- rate limit


RATE_STATUS = {
    "limits": {
        "second": {"limit": 5, "remaining": 5, "reset": 1},
        "minute": {"limit": 50, "remaining": 48, "reset": 30},
        "hour": {"limit": 500, "remaining": 498, "reset": 1800},
        "day": {"limit": 5000, "remaining": 4998, "reset": 43200},
        "max_audio_size_mb": 512,
    },
    "current_usage": {"second": 0, "minute": 2, "hour": 2, "day": 2},
}


def test_rate_limit_status_and_sync(stub: StubServer, sleeps: Sleeps) -> None:
    stub.route("GET", r"/v1/rate-limit/status", Reply(json=RATE_STATUS))
    limiter = WindowRateLimiter()
    with make_valence(stub.base_url, sleeps, limiter=limiter) as client:
        status = client.rate_limit.sync_limiter()
        assert status.limits["minute"].remaining == 48 and status.max_audio_size_mb == 512
        assert status.current_usage["minute"] == 2
        assert limiter.limits == {"second": 5, "minute": 50, "hour": 500, "day": 5000}
        assert client.uploader.max_upload_bytes == 512 * 1024 * 1024


def test_rate_limit_health(stub: StubServer, valence: ValenceClient) -> None:
    stub.route("GET", r"/v1/rate-limit/health", Reply(json={"status": "healthy", "timestamp": 1700000000}))
    assert valence.rate_limit.get_health().status == "healthy"


# --------------------------------------------------------------------------- construction


def test_key_from_environment_and_missing_key(monkeypatch: pytest.MonkeyPatch, stub: StubServer) -> None:
    monkeypatch.setenv("VALENCE_API_KEY", VALENCE_KEY)
    monkeypatch.setenv("VALENCE_API_BASE_URL", stub.base_url)
    stub.route("GET", r"/v1/rate-limit/health", Reply(json={"status": "healthy"}))
    client = ValenceClient(show_progress=False, limiter=WindowRateLimiter())
    assert client.base_url == stub.base_url and client.api_key == VALENCE_KEY
    client.rate_limit.get_health()
    assert stub.requests[0].header("x-api-key") == VALENCE_KEY
    assert VALENCE_KEY not in repr(client)
    monkeypatch.delenv("VALENCE_API_KEY")
    with pytest.raises(AuthenticationError, match="API key not provided"):
        ValenceClient()


def test_from_settings_uses_secret_str_and_options(stub: StubServer) -> None:
    settings = Settings(
        valence_api_key=VALENCE_KEY,
        valence_api_base_url=stub.base_url,
        upload_part_size=8 * 1024 * 1024,
        upload_threads=5,
        http_timeout_s=12.5,
        http_max_retries=2,
        valence_rate_limits={"second": 3, "minute": 30, "hour": 300, "day": 3000},
    )
    client = valence_client(settings)
    assert client.api_key == VALENCE_KEY and client.base_url == stub.base_url
    assert (client.asynch.part_size, client.asynch.max_threads, client.asynch.show_progress) == (
        8 * 1024 * 1024,
        5,
        False,
    )
    assert client.transport.timeout == 12.5 and client.transport.retry.max_retries == 2
    assert isinstance(client.transport.limiter, WindowRateLimiter)
    assert client.transport.limiter.limits["second"] == 3
    override = WindowRateLimiter()
    assert valence_client(settings, limiter=override).transport.limiter is override
