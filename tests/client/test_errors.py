"""Every documented error answer becomes its typed error, with its fields, over real HTTP."""

from __future__ import annotations

import pickle

import pytest

from tests.client.conftest import VALENCE_KEY, Sleeps
from tests.client.stubs import Reply, StubServer
from valence_client import (
    APIConnectionError,
    AudioTooLongError,
    AudioTooShortError,
    AuthenticationError,
    InsufficientCreditsError,
    InvalidRequestError,
    JobNotReadyError,
    NotFoundError,
    RateLimitError,
    ServerError,
    ValenceClient,
    ValenceSDKException,
    ValseaClient,
    error_from_response,
)

STATUS = r"/v1/asynch/emotion/status/.+"


def test_401_is_authentication_error(stub: StubServer, valence: ValenceClient) -> None:
    stub.route("GET", STATUS, Reply(401, json={"error": "Invalid API key"}))
    with pytest.raises(AuthenticationError) as info:
        valence.asynch.status("req-1")
    err = info.value
    assert (err.status, err.provider, err.request_id, err.retryable) == (401, "valence", "req-1", False)
    assert "Invalid API key" in str(err)
    assert len(stub.requests) == 1


def test_402_is_never_retried(stub: StubServer, valsea: ValseaClient, sleeps: Sleeps) -> None:
    stub.route(
        "GET",
        r"/v1/prosody/j-1",
        Reply(402, json={"error": {"code": "insufficient_credits", "message": "no credits"}}),
    )
    with pytest.raises(InsufficientCreditsError) as info:
        valsea.status("j-1")
    err = info.value
    assert (err.status, err.error_code, err.job_id, err.provider, err.retryable) == (
        402,
        "insufficient_credits",
        "j-1",
        "valsea",
        False,
    )
    assert len(stub.requests) == 1 and sleeps == []


def test_404_not_found_or_expired(stub: StubServer, valence: ValenceClient) -> None:
    stub.route("GET", STATUS, Reply(404, json={"error": "request not found or expired"}))
    with pytest.raises(NotFoundError) as info:
        valence.asynch.status("gone")
    assert info.value.request_id == "gone" and info.value.status == 404


def test_409_is_job_not_ready_and_not_retried_by_transport(
    stub: StubServer, valsea: ValseaClient, sleeps: Sleeps
) -> None:
    stub.route(
        "GET",
        r"/v1/prosody/j-2/result",
        Reply(409, json={"error": "job not completed"}, headers={"Retry-After": "3"}),
    )
    with pytest.raises(JobNotReadyError) as info:
        valsea.result("j-2")
    assert (info.value.status, info.value.job_id, info.value.retry_after) == (409, "j-2", 3.0)
    assert len(stub.requests) == 1 and sleeps == []


def test_429_after_budget_is_rate_limit_error(stub: StubServer, sleeps: Sleeps) -> None:
    stub.route("GET", STATUS, Reply(429, json={"error": "slow down"}, headers={"Retry-After": "2"}))
    from tests.client.conftest import make_valence

    with make_valence(stub.base_url, sleeps, max_retries=2) as client, pytest.raises(RateLimitError) as info:
        client.asynch.status("r")
    err = info.value
    assert (err.status, err.retry_after, err.retryable) == (429, 2.0, True)
    assert len(stub.requests) == 3 and sleeps == [2.0, 2.0]


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_is_server_error_after_retries(stub: StubServer, sleeps: Sleeps, status: int) -> None:
    from tests.client.conftest import make_valence

    stub.route("GET", r"/v1/rate-limit/health", Reply(status, body=b"<html>bad gateway</html>"))
    with make_valence(stub.base_url, sleeps, max_retries=1) as client, pytest.raises(ServerError) as info:
        client.rate_limit.get_health()
    assert info.value.status == status and info.value.retryable
    assert len(stub.requests) == 2


def test_valsea_503_service_not_configured(stub: StubServer, valsea: ValseaClient) -> None:
    stub.route("GET", r"/v1/prosody/j", Reply(503, json={"error": "service not configured"}))
    with pytest.raises(ServerError) as info:
        valsea.status("j")
    assert info.value.provider == "valsea" and "service not configured" in str(info.value)


def test_audio_too_short(stub: StubServer, valence: ValenceClient) -> None:
    stub.route(
        "POST",
        r"/v1/discrete/emotion",
        Reply(
            400,
            json={
                "error": "Audio too short",
                "error_code": "AUDIO_TOO_SHORT",
                "min_duration_seconds": 4.0,
                "actual_duration_seconds": 1.5,
            },
        ),
    )
    with pytest.raises(AudioTooShortError) as info:
        valence.discrete.emotions(audio_array=[0.1] * 100)
    err = info.value
    assert (err.min_duration, err.actual_duration, err.error_code, err.status) == (
        4.0,
        1.5,
        "AUDIO_TOO_SHORT",
        400,
    )
    assert isinstance(err, InvalidRequestError) and not err.retryable


@pytest.mark.parametrize("code", ["AUDIO_TOO_LONG", "FILE_TOO_LARGE"])
def test_audio_too_long_and_file_too_large(stub: StubServer, valence: ValenceClient, code: str) -> None:
    body = {
        "error": "too long",
        "error_code": code,
        "max_duration_seconds": 10,
        "actual_duration_seconds": 12.5,
    }
    stub.route("POST", r"/v1/discrete/emotion", Reply(400, json=body))
    with pytest.raises(AudioTooLongError) as info:
        valence.discrete.emotions(audio_array=[0.0, 0.1])
    assert (info.value.max_duration, info.value.actual_duration, info.value.error_code) == (10, 12.5, code)


def test_other_400_is_invalid_request(stub: StubServer, valence: ValenceClient) -> None:
    stub.route("POST", r"/v1/discrete/emotion", Reply(400, json={"detail": "payload must be a list"}))
    with pytest.raises(InvalidRequestError) as info:
        valence.discrete.emotions(audio_array=[0.0])
    assert type(info.value) is InvalidRequestError and "payload must be a list" in str(info.value)


def test_connection_refused_is_api_connection_error(sleeps: Sleeps) -> None:
    from tests.client.conftest import make_valence

    with StubServer() as dead:
        url = dead.base_url
    with make_valence(url, sleeps, max_retries=2) as client, pytest.raises(APIConnectionError) as info:
        client.rate_limit.get_health()
    assert info.value.retryable and info.value.status is None
    assert len(sleeps) == 2


def test_mapping_is_one_function_for_both_providers() -> None:
    err = error_from_response(
        429,
        {"error": "x"},
        {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1000000060"},
        provider="valsea",
        now_wall=1_000_000_000.0,
    )
    assert isinstance(err, RateLimitError) and err.retry_after == 60.0
    unknown = error_from_response(418, "teapot", None, provider="valence")
    assert type(unknown) is InvalidRequestError


def test_errors_keep_their_fields_through_pickle() -> None:
    err = AudioTooShortError("short", min_duration=4.0, actual_duration=1.0, status=400, request_id="r-9")
    copy = pickle.loads(pickle.dumps(err))  # noqa: S301 - our own bytes
    assert (type(copy), copy.min_duration, copy.request_id, str(copy)) == (
        AudioTooShortError,
        4.0,
        "r-9",
        "short",
    )


def test_error_text_never_holds_the_key() -> None:
    ValenceClient(api_key=VALENCE_KEY, base_url="http://127.0.0.1:9")  # registers the key
    err = ValenceSDKException(f"boom with x-api-key: {VALENCE_KEY} at https://s3/x?X-Amz-Signature=abcdef123")
    assert VALENCE_KEY not in str(err) and VALENCE_KEY not in repr(err)
    assert "abcdef123" not in str(err) and "abcdef123" not in repr(err)
