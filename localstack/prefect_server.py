"""A real `prefect server start` on loopback, backed by a fresh PostgreSQL database of its own.

What the tests about deployments, events and several workers run against, and what the
benchmark's workers scenario deploys to: the scheduler, triggers and event services on (Prefect's
temporary server runs none of them), the UI off. PostgreSQL, not SQLite, because a night of
batch runs on several workers is many concurrent writers: on SQLite the server answers "database
is locked" to worker heartbeats and global concurrency limits stall (≈15 acquisitions/s against
≈110/s). The server ends with the process that started it (PDEATHSIG), and its database is
dropped when the context ends.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from flows.temporary_server import wait_until_healthy
from localstack.seaweedfs import free_ports
from valence_pipeline.processes import ending_with_this_process, stop_process

PREFECT = str(Path(sys.executable).with_name("prefect"))
QUIET = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "INFO"}


@dataclass
class PrefectServer:
    api_url: str
    home: Path
    log_path: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a CLI, worker or flow process talking to this server."""
        env = {**os.environ, **QUIET, "PREFECT_API_URL": self.api_url, "PREFECT_HOME": str(self.home)}
        env.pop("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", None)
        return {**env, **extra}

    def cli(self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
        done = subprocess.run(
            [PREFECT, *args], cwd=cwd, env=env or self.env(), capture_output=True, text=True, timeout=600
        )
        if done.returncode != 0:
            raise RuntimeError(f"prefect {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """One call to the server's REST API; the decoded JSON answer (None when empty)."""
        resp = requests.request(method, f"{self.api_url}{path}", json=body, timeout=30)
        resp.raise_for_status()
        return resp.json() if resp.content else None

    def start_worker(
        self, pool: str, name: str, env: dict[str, str], log_path: Path, *, limit: int = 1
    ) -> subprocess.Popen[bytes]:
        """A process worker taking `limit` flow runs at a time, polling every second; stopped,
        with its flow-run processes, by `stop_workers` (or when this process dies)."""
        log = log_path.open("wb")
        proc = subprocess.Popen(
            ending_with_this_process(
                [PREFECT, "worker", "start", "--pool", pool, "--name", name, "--limit", str(limit)]
            ),
            env={**env, "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def stop_workers(self) -> None:
        # One SIGTERM each, then time: a worker answers a second SIGTERM with SIGKILL
        # (prefect.utilities.processutils.setup_signal_handlers_worker), and a flow-run
        # process killed so loses the log lines it has not sent yet.
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


@contextlib.contextmanager
def fresh_postgres_database(postgres_url: str, name: str) -> Iterator[str]:
    """A database of its own, `name`, on `postgres_url`'s PostgreSQL (one left by a killed
    run is dropped first); yields its URL and drops it on exit."""
    import sqlalchemy as sa

    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'drop database if exists "{name}" with (force)'))
        conn.execute(sa.text(f'create database "{name}"'))
    try:
        yield sa.engine.make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'drop database if exists "{name}" with (force)'))
        admin.dispose()


@contextlib.contextmanager
def prefect_server(
    postgres_url: str, home: Path, *, startup_timeout_s: float = 180
) -> Iterator[PrefectServer]:
    """Start a server whose database is a new one on `postgres_url`'s PostgreSQL; on exit stop
    its workers, then it, and drop the database."""
    import sqlalchemy as sa

    port = free_ports(1)[0]
    server = PrefectServer(f"http://127.0.0.1:{port}/api", home, home / "server.log")
    with fresh_postgres_database(postgres_url, f"prefect_{uuid.uuid4().hex[:10]}") as database_url:
        pg = sa.engine.make_url(database_url).set(drivername="postgresql+asyncpg")
        env = server.env(
            PREFECT_SERVER_DATABASE_CONNECTION_URL=pg.render_as_string(hide_password=False),
            PREFECT_SERVER_UI_ENABLED="false",
            # Plan scheduled runs and evaluate triggers every second, not every minute.
            PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="1",
            PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED="true",
        )
        env.pop("PREFECT_API_URL")
        proc: subprocess.Popen[bytes] | None = None
        try:
            with server.log_path.open("wb") as log:
                proc = subprocess.Popen(
                    ending_with_this_process(
                        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)]
                    ),
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            wait_until_healthy(
                proc, server.api_url, startup_timeout_s, log=lambda: server.log_path.read_text()[-4000:]
            )
            yield server
        finally:
            server.stop_workers()
            stop_process(proc, timeout_s=30)
