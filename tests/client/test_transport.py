"""The one retry loop, against scripted servers: what is retried, how long we wait, what the
server saw."""

from __future__ import annotations

import random
from email.utils import formatdate

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.client.conftest import VALENCE_KEY, Sleeps, UpperJitter, make_valence
from tests.client.stubs import LateServer, Recorded, Reply, StubServer
from valence_client import (
    APIConnectionError,
    RateLimitError,
    RetryPolicy,
    ServerError,
    Transport,
    ValenceClient,
)

HEALTH = r"/v1/rate-limit/health"
INITIATE = r"/v1/asynch/emotion/upload/initiate"
DISCRETE = r"/v1/discrete/emotion"
OK_HEALTH = Reply(json={"status": "healthy", "timestamp": "2026-01-01T00:00:00Z"})
INITIATED = Reply(json={"upload_id": "u", "request_id": "r", "presigned_urls": []})


def test_5xx_then_success(stub: StubServer, valence: ValenceClient, sleeps: Sleeps) -> None:
    stub.route("GET", HEALTH, [Reply(503, json={"error": "busy"}), Reply(500), OK_HEALTH])
    assert valence.rate_limit.get_health().status == "healthy"
    assert len(stub.requests) == 3
    assert sleeps == [0.5, 1.0]  # initial 0.5 s, doubled; jitter pinned to the top of its range
    assert valence.stats == {
        "calls": 3,
        "retries": 2,
        "rate_limited": 0,
        "server_errors": 2,
        "connection_errors": 0,
        "failures": 0,
    }


def test_dropped_connection_then_success(stub: StubServer, valence: ValenceClient) -> None:
    stub.route("GET", HEALTH, [Reply(drop=True), OK_HEALTH])
    assert valence.rate_limit.get_health().status == "healthy"
    assert len(stub.requests) == 2 and valence.stats["connection_errors"] == 1


def test_retried_post_keeps_one_idempotency_key(stub: StubServer, valence: ValenceClient) -> None:
    stub.route("POST", DISCRETE, [Reply(502), Reply(json={"main_emotion": "sad", "confidence": 0.6})])
    assert valence.discrete.emotions(audio_array=[0.0, 0.2]).main_emotion == "sad"
    keys = {r.header("Idempotency-Key") for r in stub.requests}
    assert len(stub.requests) == 2 and len(keys) == 1 and None not in keys
    assert stub.requests[0].body == stub.requests[1].body


@pytest.mark.parametrize("failure", [Reply(500), Reply(drop=True)])
def test_creating_post_is_not_resent_after_it_reached_the_server(
    stub: StubServer, valence: ValenceClient, failure: Reply
) -> None:
    stub.route("POST", INITIATE, [failure, INITIATED])
    with pytest.raises((ServerError, APIConnectionError)) as info:
        valence.uploader._initiate("a.wav", 1)
    assert len(stub.requests) == 1 and info.value.retryable


def test_creating_post_is_resent_after_429(stub: StubServer, valence: ValenceClient, sleeps: Sleeps) -> None:
    stub.route("POST", INITIATE, [Reply(429, headers={"Retry-After": "1"}), INITIATED])
    assert valence.uploader._initiate("a.wav", 0).request_id == "r"
    assert len(stub.requests) == 2 and sleeps == [1.0]


def test_creating_post_is_resent_when_the_connection_was_refused() -> None:
    """Refused = never sent: safe to retry even a creating POST."""
    late = LateServer(lambda server: server.route("POST", INITIATE, INITIATED))
    client = make_valence(late.base_url, late)
    try:
        assert client.uploader._initiate("a.wav", 0).request_id == "r"
    finally:
        client.close()
        late.close()
    assert late.server is not None and len(late.server.requests) == 1
    assert client.stats["connection_errors"] == 1 and late.sleeps == [0.5]


def test_429_honours_retry_after_seconds(stub: StubServer, valence: ValenceClient, sleeps: Sleeps) -> None:
    stub.route("GET", HEALTH, [Reply(429, headers={"Retry-After": "7"}), OK_HEALTH])
    valence.rate_limit.get_health()
    assert sleeps == [7.0] and valence.stats["rate_limited"] == 1


def test_429_honours_retry_after_http_date(stub: StubServer) -> None:
    now = 1_800_000_000.0
    stub.route(
        "GET", HEALTH, [Reply(429, headers={"Retry-After": formatdate(now + 12, usegmt=True)}), OK_HEALTH]
    )
    sleeps = Sleeps()
    transport = Transport("valence", stub.base_url, sleep=sleeps, wall_clock=lambda: now)
    assert transport.request("GET", "/v1/rate-limit/health").status_code == 200
    assert sleeps == [12.0]


def test_429_uses_rate_limit_reset_when_no_retry_after(stub: StubServer) -> None:
    now = 1_800_000_000.0
    reset = {
        "X-RateLimit-Limit": "100",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": str(int(now) + 30),
    }
    stub.route("GET", HEALTH, [Reply(429, headers=reset), OK_HEALTH])
    sleeps = Sleeps()
    transport = Transport("valence", stub.base_url, sleep=sleeps, wall_clock=lambda: now)
    transport.request("GET", "/v1/rate-limit/health")
    assert sleeps == [30.0]


def test_429_without_hint_backs_off_with_jitter(
    stub: StubServer, valence: ValenceClient, sleeps: Sleeps
) -> None:
    stub.route("GET", HEALTH, [Reply(429), Reply(429), OK_HEALTH])
    valence.rate_limit.get_health()
    assert sleeps == [0.5, 1.0]


def test_hint_longer_than_allowed_gives_up_at_once(stub: StubServer, sleeps: Sleeps) -> None:
    stub.route("GET", HEALTH, Reply(429, headers={"Retry-After": "3600"}))
    with make_valence(stub.base_url, sleeps) as client, pytest.raises(RateLimitError) as info:
        client.rate_limit.get_health()
    assert info.value.retry_after == 3600.0 and len(stub.requests) == 1 and sleeps == []


def test_budget_of_zero_retries_means_one_call(stub: StubServer, sleeps: Sleeps) -> None:
    stub.route("GET", HEALTH, [Reply(500), OK_HEALTH])
    with make_valence(stub.base_url, sleeps, max_retries=0) as client, pytest.raises(ServerError):
        client.rate_limit.get_health()
    assert len(stub.requests) == 1 and client.stats["failures"] == 1


def test_every_call_has_a_timeout_and_a_slow_read_is_retried(stub: StubServer, sleeps: Sleeps) -> None:
    stub.route("GET", HEALTH, [Reply(delay_s=1.0, json={"status": "late"}), OK_HEALTH])
    with make_valence(stub.base_url, sleeps, timeout=0.2) as client:
        assert client.rate_limit.get_health().status == "healthy"
    assert len(stub.requests) == 2 and client.stats["connection_errors"] == 1


def test_non_json_success_is_a_server_error(stub: StubServer, valence: ValenceClient) -> None:
    stub.route("GET", HEALTH, Reply(body=b"<html>proxy</html>"))
    with pytest.raises(ServerError, match="non-JSON"):
        valence.rate_limit.get_health()


def test_key_goes_in_the_documented_header(stub: StubServer, valence: ValenceClient) -> None:
    stub.route("GET", HEALTH, OK_HEALTH)
    valence.rate_limit.get_health()
    (seen,) = stub.requests
    assert seen.header("x-api-key") == VALENCE_KEY and seen.header("Authorization") is None


def test_client_side_limiter_paces_every_attempt(stub: StubServer) -> None:
    """Two calls per second allowed: the third call of the same instant waits one second."""
    sleeps = Sleeps()
    stub.route("GET", HEALTH, OK_HEALTH)
    with make_valence(stub.base_url, sleeps, limiter=sleeps.limiter({"second": 2})) as client:
        for _ in range(3):
            client.rate_limit.get_health()
    assert sleeps == [1.0]


@given(attempt=st.integers(0, 30), seed=st.integers(0, 2**32))
def test_backoff_is_capped_jittered_and_floored(attempt: int, seed: int) -> None:
    policy = RetryPolicy(initial_delay_s=0.5, max_delay_s=20.0)
    transport = Transport("valence", "http://127.0.0.1:9", retry=policy, rng=random.Random(seed))
    full = min(policy.max_delay_s, policy.initial_delay_s * 2**attempt)
    delay = transport.backoff(attempt)
    assert max(policy.initial_delay_s, full / 2) <= delay <= full


def test_jitter_is_its_own_pinnable_method() -> None:
    transport = Transport("valence", "http://127.0.0.1:9", rng=UpperJitter())
    assert transport.jitter(8.0) == 8.0
    assert transport.backoff(10) == 20.0


def test_requests_record_what_server_saw(stub: StubServer, valence: ValenceClient) -> None:
    seen: list[Recorded] = []

    def answer(request: Recorded) -> Reply:
        seen.append(request)
        return Reply(json={"main_emotion": "happy", "confidence": 0.9})

    stub.route("POST", DISCRETE, answer)
    valence.discrete.emotions(audio_array=[0.25, -0.5], model="7emotions")
    assert seen[0].query == {"model": "7emotions"} and seen[0].json() == {"payload": [[0.25, -0.5]]}
