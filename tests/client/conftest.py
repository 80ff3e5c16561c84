"""Fixtures of the client tests: scripted stub servers, pinned sleepers, clients wired to them."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.client.stubs import StubServer
from valence_client import ValenceClient, ValseaClient, WindowRateLimiter

VALENCE_KEY = "vk_live_Q2hhbmdlTWVTZWNyZXQ1234"
VALSEA_KEY = "vs_live_U2VjcmV0VmFsc2VhS2V5999"
GENEROUS = {"second": 10_000, "minute": 100_000, "hour": 1_000_000, "day": 10_000_000}


class Sleeps(list[float]):
    """A sleeper that records instead of sleeping (pins every wait a test asserts on), and the
    fake clock those sleeps advance."""

    now: float = 0.0

    def __call__(self, seconds: float) -> None:
        self.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now

    def limiter(self, limits: dict[str, int] | None = None) -> WindowRateLimiter:
        """A limiter on this fake clock (its waits are recorded here too)."""
        return WindowRateLimiter(limits or GENEROUS, clock=self.clock, sleep=self)


class UpperJitter(random.Random):
    """`random()` always 1.0: jitter returns the full computed delay."""

    def random(self) -> float:
        return 1.0


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with StubServer() as server:
        yield server


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def valence(stub: StubServer, sleeps: Sleeps) -> Iterator[ValenceClient]:
    with make_valence(stub.base_url, sleeps) as client:
        yield client


@pytest.fixture
def valsea(stub: StubServer, sleeps: Sleeps) -> Iterator[ValseaClient]:
    with make_valsea(stub.base_url, sleeps) as client:
        yield client


def make_valence(base_url: str, sleep: Callable[[float], None], **options: Any) -> ValenceClient:
    defaults: dict[str, Any] = {
        "api_key": VALENCE_KEY,
        "base_url": base_url,
        "show_progress": False,
        "limiter": sleep.limiter() if isinstance(sleep, Sleeps) else WindowRateLimiter(GENEROUS),
        "sleep": sleep,
        "rng": UpperJitter(),
        "timeout": 5.0,
    }
    return ValenceClient(**{**defaults, **options})


def make_valsea(base_url: str, sleep: Callable[[float], None], **options: Any) -> ValseaClient:
    defaults: dict[str, Any] = {
        "api_key": VALSEA_KEY,
        "base_url": base_url,
        "limiter": sleep.limiter() if isinstance(sleep, Sleeps) else WindowRateLimiter(GENEROUS),
        "sleep": sleep,
        "rng": UpperJitter(),
        "timeout": 5.0,
    }
    return ValseaClient(**{**defaults, **options})
