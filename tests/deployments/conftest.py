"""The deployments of prefect.yaml on a real server (one for the session's deployment tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.prefect_server import PrefectServer

REPO = Path(__file__).resolve().parents[2]
POOL = "valence-pipeline"


@pytest.fixture(scope="session")
def deployed(shared_prefect_server: PrefectServer) -> PrefectServer:
    """The work pool plus `prefect deploy --all` from the repository root, as the README says."""
    shared_prefect_server.cli("work-pool", "create", POOL, "--type", "process")
    shared_prefect_server.cli("--no-prompt", "deploy", "--all", cwd=REPO)
    return shared_prefect_server
