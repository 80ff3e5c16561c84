"""Prefect's temporary server for a run with no PREFECT_API_URL, ending with the run's process.

Prefect starts the same server itself on the first flow call, but stops it only from `atexit`:
a `valence-pipeline run` killed outright (SIGKILL, OOM) left it running for good. This starts
the very command Prefect starts (uvicorn on Prefect's app factory, services and UI off) through
`valence_pipeline.processes`, so the kernel stops it when the run's process dies, however it
dies; a normal exit stops it at once.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from valence_pipeline.processes import ending_with_this_process, stop_process


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _drain_to(server: subprocess.Popen[bytes]) -> None:
    """Send the run's last log lines and events while the server still listens (else Prefect
    prints "Error logging to API" at exit)."""
    if server.poll() is not None:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=10)
        except Exception:  # noqa: BLE001, S110 - a log line lost at exit must not fail the run
            pass


def wait_until_healthy(
    server: subprocess.Popen[bytes],
    api_url: str,
    timeout_s: float,
    *,
    what: str = "the Prefect server",
    log: Callable[[], str] = lambda: "",
) -> None:
    """Return once `api_url`/health answers; RuntimeError if `server` exits first or
    `timeout_s` passes (with `log()`, e.g. the end of the server's log, in the message)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"{what} exited with code {server.returncode}{_then(log())}")
        try:
            if requests.get(f"{api_url}/health", timeout=2).ok:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer in {timeout_s:.0f} s{_then(log())}")
        time.sleep(0.1)


def _then(text: str) -> str:
    return f":\n{text}" if text else ""


@contextmanager
def temporary_prefect_server(startup_timeout_s: float | None = None) -> Iterator[str | None]:
    """Within the block, flows talk to PREFECT_API_URL if one is configured (yields None), or
    else to a temporary server of this process's own (yields its API URL)."""
    import prefect
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        get_current_settings,
        temporary_settings,
    )

    if PREFECT_API_URL.value():
        yield None
        return
    port = _free_port()
    cmd = [
        sys.executable, "-m", "uvicorn", "--app-dir", str(Path(prefect.__file__).parent.parent),
        "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
        "--port", str(port), "--log-level", "error", "--lifespan", "on",
    ]  # fmt: skip
    env = {
        **os.environ,
        **get_current_settings().to_environment_variables(exclude_unset=True),
        # What Prefect sets for its temporary server: no UI, no background services.
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
    }
    server = subprocess.Popen(ending_with_this_process(cmd), env=env)
    api_url = f"http://127.0.0.1:{port}/api"
    try:
        # Prefect's default (20 s) is too short for a busy 2-core machine: at least 90 s.
        timeout_s = startup_timeout_s or max(
            90.0, float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
        )
        wait_until_healthy(server, api_url, timeout_s, what="Prefect's temporary server")
        # Child processes (the dataset child, a flow-run subprocess) inherit the address too.
        os.environ["PREFECT_API_URL"] = api_url
        try:
            with temporary_settings(updates={PREFECT_API_URL: api_url}):
                yield api_url
        finally:
            os.environ.pop("PREFECT_API_URL", None)
    finally:
        _drain_to(server)
        stop_process(server)
