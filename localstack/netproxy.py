"""A TCP proxy on loopback that shapes and breaks connections: a WAN link and network faults
for benchmarks and reliability tests (these kernels have no `netem`).

    with NetProxy(("127.0.0.1", 8333), rtt_s=0.04, bandwidth_bps=50e6) as wan:
        ...  # point the client at wan.url

    with NetProxy(("127.0.0.1", 8333), seed=3) as proxy:
        proxy.reset_responses(probability=0.3, after_bytes=(64 * 1024, 2 * 1024 * 1024))
        proxy.refuse_for(2.0)  # the port is closed for 2 s, open connections are reset

Shaping: each direction is a link with a bandwidth (bytes/s, shared by all connections, so
parallel streams compete as on a real link) and half the round trip as propagation delay.
A reader thread takes bytes as fast as the link's bandwidth lets them through, and a writer
thread delivers them once the delay has passed, so delay is pipelined, not a stop-and-wait.

Faults: `reset_responses` picks, per request with the given probability (a request: the client
writing again after an answer, on a new or a kept-alive connection), a number of bytes after
which the server-to-client direction is cut with a TCP reset (RST), typically in the middle of
a response body. `refuse_for` closes the listening port for a while (clients
get "connection refused") and resets the connections that were open. The counters in
`stats` say what was done.
"""

from __future__ import annotations

import contextlib
import queue
import random
import select
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

CHUNK = 64 * 1024


@dataclass
class _Link:
    """One direction of the shaped link: serialisation at `bandwidth_bps`, then `delay_s`."""

    bandwidth_bps: float | None
    delay_s: float
    _next_free: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def shaped(self) -> bool:
        return bool(self.bandwidth_bps) or self.delay_s > 0

    def admit(self, size: int) -> float:
        """Block until `size` bytes have gone through the link; when they arrive at the far end."""
        now = time.monotonic()
        if self.bandwidth_bps:
            with self._lock:
                start = max(now, self._next_free)
                self._next_free = start + size / self.bandwidth_bps
                sent = self._next_free
            if sent > now:
                time.sleep(sent - now)
            now = sent
        return now + self.delay_s


def _reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN: the peer sees 'connection reset by peer'."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class _Connection:
    def __init__(
        self, proxy: NetProxy, client: socket.socket, upstream: socket.socket, cut: int | None
    ) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.cut = cut  # bytes to the client after which the connection is reset, if any
        self.sent_down = 0
        self._drawn_at = 0  # sent_down when the cut was last drawn
        self.closed = threading.Event()
        self.threads: list[threading.Thread] = []
        self.queues: list[queue.Queue[tuple[float, bytes] | None]] = []
        self._finished = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        self._pump(self.client, self.upstream, self.proxy.up, down=False)
        self._pump(self.upstream, self.client, self.proxy.down, down=True)

    def _pump(self, src: socket.socket, dst: socket.socket, link: _Link, *, down: bool) -> None:
        pending: queue.Queue[tuple[float, bytes] | None] | None = queue.Queue() if link.shaped else None
        if pending is not None:
            self.queues.append(pending)
        reader = threading.Thread(target=self._read, args=(src, dst, link, pending, down), daemon=True)
        self.threads.append(reader)
        if pending is not None:
            writer = threading.Thread(target=self._write, args=(dst, pending, down), daemon=True)
            self.threads.append(writer)
            writer.start()
        reader.start()

    def _read(
        self,
        src: socket.socket,
        dst: socket.socket,
        link: _Link,
        pending: queue.Queue[tuple[float, bytes] | None] | None,
        down: bool,
    ) -> None:
        try:
            while not self.closed.is_set():
                # select first: a recv blocked on a socket that another thread closes never wakes
                ready, _, _ = select.select([src], [], [], 0.1)
                if not ready:
                    continue
                data = src.recv(CHUNK)
                if not data:
                    break
                if not down and self.sent_down > self._drawn_at:
                    # The client writes again after an answer: a new request on a kept-alive
                    # connection, so each request gets its own draw.
                    self._drawn_at = self.sent_down
                    self.cut = self.proxy._draw_cut_locked(self.sent_down)
                if pending is None:
                    if not self._deliver(dst, data, down):
                        return
                else:
                    pending.put((link.admit(len(data)), data))
        except (OSError, ValueError):
            pass
        if pending is not None:
            pending.put(None)
        else:
            self._half_close(dst)

    def _write(
        self, dst: socket.socket, pending: queue.Queue[tuple[float, bytes] | None], down: bool
    ) -> None:
        while True:
            item = pending.get()
            if item is None:
                self._half_close(dst)
                return
            due, data = item
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if not self._deliver(dst, data, down):
                return

    def _deliver(self, dst: socket.socket, data: bytes, down: bool) -> bool:
        """Send `data`; False once the connection is gone (or has just been cut)."""
        if self.closed.is_set():
            return False
        if down and self.cut is not None and self.sent_down + len(data) >= self.cut:
            keep = self.cut - self.sent_down
            with contextlib.suppress(OSError):
                dst.sendall(data[:keep])
            self.proxy._count("resets")
            self.abort()
            return False
        try:
            dst.sendall(data)
        except OSError:
            self.abort()
            return False
        if down:
            self.sent_down += len(data)
        return True

    def _half_close(self, dst: socket.socket) -> None:
        """One direction ended (EOF): pass it on; once both have, close the connection."""
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
        with self._lock:
            self._finished += 1
            both = self._finished == 2
        if both and not self.closed.is_set():
            self.closed.set()
            for sock in (self.client, self.upstream):
                with contextlib.suppress(OSError):
                    sock.close()
            self.proxy._forget(self)

    def abort(self) -> None:
        with self._lock:
            if self.closed.is_set():
                return
            self.closed.set()
        _reset(self.client)
        _reset(self.upstream)
        for pending in self.queues:
            pending.put(None)
        self.proxy._forget(self)


class NetProxy:
    """See the module docstring. Thread-based; `stop()` (or the context manager) ends everything."""

    def __init__(
        self,
        target: tuple[str, int],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        rtt_s: float = 0.0,
        bandwidth_bps: float | None = None,
        seed: int = 0,
    ) -> None:
        self.target = target
        self.host = host
        self.port = port
        self.up = _Link(bandwidth_bps, rtt_s / 2)
        self.down = _Link(bandwidth_bps, rtt_s / 2)
        self.stats: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._connections: set[_Connection] = set()
        self._listener: socket.socket | None = None
        self._refused_until = 0.0
        self._reset_probability = 0.0
        self._reset_after = (0, 0)
        self._stopping = threading.Event()
        self._acceptor: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ------------------------------------------------------------------ faults

    def reset_responses(
        self, probability: float, after_bytes: tuple[int, int] = (64 * 1024, 4 * 1024 * 1024)
    ) -> None:
        """From now on, each connection (the open ones included: clients keep them alive) is
        reset with `probability` after a random number of further bytes (uniform in
        `after_bytes`) has gone to the client. 0 turns it off."""
        with self._lock:
            self._reset_probability = probability
            self._reset_after = after_bytes
            for conn in self._connections:
                conn.cut = self._draw_cut(conn.sent_down)

    def _draw_cut_locked(self, sent: int) -> int | None:
        with self._lock:
            return self._draw_cut(sent)

    def _draw_cut(self, sent: int) -> int | None:
        if self._reset_probability and self._rng.random() < self._reset_probability:
            return sent + self._rng.randint(*self._reset_after)
        return None

    def refuse_for(self, seconds: float) -> None:
        """Close the port for `seconds` (connection refused) and reset the open connections."""
        with self._lock:
            self._refused_until = time.monotonic() + seconds
            listener, self._listener = self._listener, None
            connections = list(self._connections)
        if listener is not None:
            listener.close()
        for conn in connections:
            conn.abort()
        self._count("refusals")

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        self._listen()
        self._acceptor = threading.Thread(target=self._accept_loop, name="netproxy-accept", daemon=True)
        self._acceptor.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join(timeout=5)
        with self._lock:
            listener, self._listener = self._listener, None
            connections = list(self._connections)
        if listener is not None:
            listener.close()
        for conn in connections:
            conn.abort()
        for conn in connections:
            for thread in conn.threads:
                thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        with self._lock:
            self._listener = listener

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                listener = self._listener
                reopen = listener is None and time.monotonic() >= self._refused_until
            if reopen:
                self._listen()
                continue
            if listener is None:
                time.sleep(0.02)
                continue
            try:
                ready, _, _ = select.select([listener], [], [], 0.05)
                if not ready:
                    continue
                client, _ = listener.accept()
            except (OSError, ValueError):
                continue  # closed by refuse_for/stop meanwhile
            self._open(client)

    def _open(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=10)
            upstream.settimeout(None)
        except OSError:
            _reset(client)
            self._count("upstream_errors")
            return
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            conn = _Connection(self, client, upstream, self._draw_cut(0))
            self._connections.add(conn)
        self._count("connections")
        conn.start()

    def _forget(self, conn: _Connection) -> None:
        with self._lock:
            self._connections.discard(conn)

    def _count(self, name: str) -> None:
        with self._lock:
            self.stats[name] += 1
