"""Run the emulator under uvicorn and announce the port on stdout (one line, then nothing)."""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable

from emulator.config import EmulatorConfig

log = logging.getLogger(__name__)

ANNOUNCEMENT = "emulator listening on {url}"


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); port 0 picks a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket, host: str) -> str:
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def serve(config: EmulatorConfig, announce: Callable[[str], None] | None = None) -> None:
    """Serve until SIGINT/SIGTERM. `announce(url)` runs once the server accepts connections;
    by default it prints `emulator listening on URL` to stdout and flushes."""
    import uvicorn

    from emulator.app import build_asgi

    sock = bind(config.host, config.port)
    url = url_of(sock, config.host)
    app = build_asgi(config)
    uv_config = uvicorn.Config(
        app,
        http="h11",  # the gate's "drop" fault relies on h11's request cycle exposing its transport
        lifespan="off",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
        timeout_keep_alive=65,  # like a cloud load balancer; fewer races with pooled client connections
    )

    def default_announce(u: str) -> None:
        sys.stdout.write(ANNOUNCEMENT.format(url=u) + "\n")
        sys.stdout.flush()

    say = announce or default_announce

    class _Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                say(url)
                log.info(
                    "emulator ready at %s (time scale %g, faults %r)",
                    url,
                    config.time_scale,
                    config.faults.to_text(),
                )

    if threading.current_thread() is threading.main_thread():
        # uvicorn sends itself the SIGTERM it caught again once it has shut down. With the
        # default action the process would die right there, before its exit handlers: the
        # emulator's own data folder (no --data-dir) would stay in TMPDIR after every stop.
        signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        _Server(uv_config).run(sockets=[sock])
    finally:
        sock.close()


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # the shell's status for "ended by this signal"
