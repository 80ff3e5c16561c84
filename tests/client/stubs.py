"""A scripted HTTP server on port 0 (stripe's test_integration pattern).

Each route answers from a script: a list of `Reply` consumed in order (the last one repeats),
or a function of the recorded request. Every request is recorded so tests can assert what the
server actually received.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None


@dataclass
class Reply:
    status: int = 200
    json: Any = None
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False
    """Close the connection without answering (after reading the request)."""
    delay_s: float = 0.0


Script = list[Reply] | Callable[[Recorded], Reply]


class StubServer:
    def __init__(self, port: int = 0) -> None:
        self.requests: list[Recorded] = []
        self._routes: list[tuple[str, re.Pattern[str], Script]] = []
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                recorded = Recorded(
                    method=self.command,
                    path=parts.path,
                    query={k: v[0] for k, v in parse_qs(parts.query).items()},
                    headers=dict(self.headers.items()),
                    body=body,
                )
                reply = stub._reply(recorded)
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                if reply.drop:
                    self.close_connection = True
                    return
                payload = json.dumps(reply.json).encode() if reply.json is not None else reply.body
                self.send_response(reply.status)
                headers = {"Content-Length": str(len(payload)), **reply.headers}
                if reply.json is not None:
                    headers.setdefault("Content-Type", "application/json")
                for key, value in headers.items():
                    self.send_header(key, value)
                try:
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    # The client gave up first (a delayed reply past its read timeout): what
                    # those tests want; not a server error worth a traceback in the output.
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def route(self, method: str, path_regex: str, script: Script | Reply) -> StubServer:
        """Answer `method` on paths fully matching `path_regex` from `script`."""
        if isinstance(script, Reply):
            script = [script]
        self._routes.append((method.upper(), re.compile(path_regex), script))
        return self

    def _reply(self, recorded: Recorded) -> Reply:
        with self._lock:
            self.requests.append(recorded)
            for method, pattern, script in self._routes:
                if method == recorded.method and pattern.fullmatch(recorded.path):
                    if callable(script):
                        return script(recorded)
                    return script.pop(0) if len(script) > 1 else script[0]
        return Reply(404, json={"error": f"no stub for {recorded.method} {recorded.path}"})

    def calls(self, method: str, path_regex: str) -> list[Recorded]:
        pattern = re.compile(path_regex)
        return [r for r in self.requests if r.method == method and pattern.fullmatch(r.path)]

    def __enter__(self) -> StubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve() -> Iterator[StubServer]:
    with StubServer() as stub:
        yield stub


def free_port() -> int:
    """A port nothing listens on (yet): connecting to it is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LateServer:
    """A sleeper that starts a stub on a fixed port at its first call: the first attempt is
    refused (never sent), the retry after the pinned backoff reaches the server."""

    def __init__(self, configure: Callable[[StubServer], object]) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._configure = configure
        self.server: StubServer | None = None
        self.sleeps: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if self.server is None:  # the port is bound only now
            server = StubServer(port=self.port)
            self._configure(server)
            self.server = server.__enter__()

    def close(self) -> None:
        if self.server is not None:
            self.server.__exit__()
