"""Redirects never carry a key to another host: two stub servers on port 0, the first answers
every call with a redirect to the second, which must never be reached."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.client.conftest import VALENCE_KEY, VALSEA_KEY, Sleeps, make_valence, make_valsea
from tests.client.stubs import Recorded, Reply, StubServer
from valence_client import ValenceClient, ValseaClient
from valence_client.errors import InvalidRequestError


@pytest.fixture
def elsewhere() -> Iterator[StubServer]:
    with StubServer() as server:
        server.route("GET", r".*", Reply(json={"status": "healthy", "timestamp": "2026-01-01T00:00:00Z"}))
        server.route("POST", r".*", Reply(json={"main_emotion": "sad", "confidence": 0.6}))
        yield server


def redirect_to(target: StubServer, status: int) -> Callable[[Recorded], Reply]:
    def reply(recorded: Recorded) -> Reply:
        location = f"{target.base_url}{recorded.path}?X-Amz-Signature=deadbeefcafe"
        return Reply(status, headers={"Location": location})

    return reply


CALLS: dict[str, Callable[[ValenceClient, ValseaClient], object]] = {
    "valence GET": lambda valence, _: valence.rate_limit.get_health(),
    "valence POST": lambda valence, _: valence.discrete.emotions(audio_array=[0.0, 0.2]),
    "valsea GET": lambda _, valsea: valsea.status("job-1"),
}


@pytest.mark.parametrize("status", [301, 302, 307, 308])
@pytest.mark.parametrize("call", list(CALLS))
def test_redirect_is_refused_and_the_other_host_sees_nothing(
    stub: StubServer, elsewhere: StubServer, sleeps: Sleeps, status: int, call: str
) -> None:
    stub.route("GET", r".*", redirect_to(elsewhere, status))
    stub.route("POST", r".*", redirect_to(elsewhere, status))
    with make_valence(stub.base_url, sleeps) as valence, make_valsea(stub.base_url, sleeps) as valsea:
        with pytest.raises(InvalidRequestError) as caught:
            CALLS[call](valence, valsea)
    assert elsewhere.requests == []  # never followed, so no key left for the other host
    assert len(stub.requests) == 1 and sleeps == []  # not retried either
    assert caught.value.status == status and not caught.value.retryable
    text = str(caught.value)
    assert elsewhere.base_url in text and "deadbeefcafe" not in text
    assert VALENCE_KEY not in text and VALSEA_KEY not in text
