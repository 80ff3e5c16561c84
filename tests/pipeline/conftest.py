"""One Prefect temporary server (the test harness) for the pipeline tests: flows run in
this process talk to it, child processes get its URL (`prefect_api`) instead of starting one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fixtures.prefect_server import harness_api


@pytest.fixture(scope="package")
def prefect_api() -> Iterator[str]:
    with harness_api() as url:
        yield url


@pytest.fixture(scope="package")
def prefect_harness(prefect_api: str) -> None:
    """For tests that only run flows in this process."""
