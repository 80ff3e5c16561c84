"""Real-time emotion over Socket.IO: `client.streaming.connect(model=...)`.

The public SDK's `StreamConnection` surface (`on_prediction`, `on_error`, `on_connected`,
`connect()`, `send_audio(pcm)`, `connected`, `wait()`, `disconnect()`), plus what a real-time
caller needs:

- **Reconnect.** A dropped connection (server restart, network) is reopened with capped,
  jittered exponential backoff (`ReconnectPolicy`; RNG injectable). Each reconnect is a new
  server session (new `session_id`); audio queued meanwhile goes out on it. A refusal (an
  `error` event, then a disconnect, before `connected`) is final for a bad key; one carrying
  `retry_after` (rate limit) waits at least that long.
- **Bounded send queue.** At most `max_queue_bytes` of audio wait to be sent. When full,
  `send_audio` drops the OLDEST chunks (counted in `stats`): live capture must never block its
  audio callback, and for real-time emotion fresh audio is worth more than stale audio.
  `send_audio(..., block=True, timeout=...)` waits for room instead, which is what
  `stream_wav` does: a file can wait and should not lose audio. Below our queue at most one
  message sits in the Socket.IO client's own (unbounded) queue, so a server that stops reading
  costs us `max_queue_bytes` plus kernel buffers, whatever is sent.
- **`stream_wav(source, pace=1.0)`.** Streams a WAV (any soundfile format, downmixed to mono,
  its sample rate sent along) or any iterator of int16 PCM, in order, at `pace` times real
  time (0: as fast as the server takes it).

Callbacks run on one dispatcher thread, in the order the server sent the events, with typed
events (`PredictionEvent`, ...; `data["main_emotion"]` works too, as with the SDK's dicts).
The API key never appears in logs, exceptions or `repr`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import engineio
import socketio
from pydantic import ValidationError

from valence_client._logging import get_logger
from valence_client.errors import APIConnectionError, AuthenticationError, InvalidInputError, RateLimitError
from valence_client.limiter import RateLimiter
from valence_client.models import VALENCE_MODELS
from valence_client.redaction import install_redaction, redact, register_secret
from valence_client.stream_protocol import (
    DEFAULT_SAMPLE_RATE,
    EVENT_CONNECTED,
    EVENT_ERROR,
    EVENT_MESSAGE,
    EVENT_PREDICTION,
    EVENT_WARNING,
    SAMPLE_WIDTH,
    SOCKETIO_PATH,
    AudioMessage,
    ConnectedEvent,
    ErrorEvent,
    PredictionEvent,
    StreamEvent,
    WarningEvent,
)

logger = get_logger(__name__)
for _name in ("socketio.client", "engineio.client"):
    install_redaction(logging.getLogger(_name))

PROVIDER = "valence"
KiB = 1024
DEFAULT_QUEUE_BYTES = 4 * 1024 * KiB
"""About 47 s of 44.1 kHz audio: rides out a server restart without dropping anything."""
MAX_CHUNK_BYTES = 64 * KiB
"""Bigger `send_audio` buffers go out as several messages (each well under server caps)."""
DEFAULT_TRANSPORTS = ("polling", "websocket")
"""What the public SDK asks for, so whatever serves the SDK serves us."""

E = TypeVar("E", bound=StreamEvent)
Callback = Callable[[Any], None]


# --------------------------------------------------------------------------- policy & queue


@dataclass(frozen=True)
class ReconnectPolicy:
    """Delay before reconnect attempt n: `initial_s * multiplier**(n-1)`, capped at `max_s`,
    jittered into its upper half (so clients restarted together spread out) and never below
    `initial_s`. `max_attempts=None` keeps trying until `disconnect()`. A server `retry_after`
    longer than `max_retry_after_s` ends the stream instead of idling that long."""

    initial_s: float = 0.5
    max_s: float = 30.0
    multiplier: float = 2.0
    max_attempts: int | None = None
    max_retry_after_s: float = 120.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        ceiling = min(self.max_s, self.initial_s * self.multiplier ** max(0, attempt - 1))
        return max(self.initial_s, ceiling * (0.5 + 0.5 * rng.random()))


class SendQueueFullError(APIConnectionError):
    """`send_audio(block=True, timeout=...)` found no room in time: the server is not reading."""


@dataclass(frozen=True)
class _Chunk:
    pcm: bytes
    sample_rate: int | None


class SendQueue:
    """FIFO of PCM chunks holding at most `max_bytes`. `put(block=False)` makes room by dropping
    the oldest chunks; `put(block=True)` waits for room. Tracks its high-water mark."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < MAX_CHUNK_BYTES:
            raise InvalidInputError(f"max_queue_bytes must be at least {MAX_CHUNK_BYTES}")
        self.max_bytes = max_bytes
        self._items: deque[_Chunk] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.queued_bytes = 0
        self.in_flight = 0
        self.high_water = 0
        self.dropped_chunks = 0
        self.dropped_bytes = 0

    def put(self, chunk: _Chunk, *, block: bool = False, timeout: float | None = None) -> None:
        size = len(chunk.pcm)
        with self._cond:
            if block and not self._cond.wait_for(
                lambda: self._closed or self.queued_bytes + size <= self.max_bytes, timeout
            ):
                raise SendQueueFullError(
                    f"send queue stayed full for {timeout} s; the server is not reading", provider=PROVIDER
                )
            if self._closed:
                raise APIConnectionError("the stream is closed", provider=PROVIDER)
            while self._items and self.queued_bytes + size > self.max_bytes:
                oldest = self._items.popleft()
                self.queued_bytes -= len(oldest.pcm)
                self._drop(oldest)
            self._items.append(chunk)
            self.queued_bytes += size
            self.high_water = max(self.high_water, self.queued_bytes)
            self._cond.notify_all()

    def get(self, timeout: float) -> _Chunk | None:
        """The oldest chunk, now counted as in flight until `done` or `requeue`."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._closed, timeout) or not self._items:
                return None
            chunk = self._items.popleft()
            self.queued_bytes -= len(chunk.pcm)
            self.in_flight += 1
            self._cond.notify_all()
            return chunk

    def done(self) -> None:
        with self._cond:
            self.in_flight -= 1
            self._cond.notify_all()

    def requeue(self, chunk: _Chunk) -> None:
        """Put an unsent chunk back in front (it is the oldest), or drop it if there is no room."""
        with self._cond:
            self.in_flight -= 1
            if self.queued_bytes + len(chunk.pcm) <= self.max_bytes:
                self._items.appendleft(chunk)
                self.queued_bytes += len(chunk.pcm)
            else:
                self._drop(chunk)
            self._cond.notify_all()

    def wait_empty(self, timeout: float | None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._closed or not (self._items or self.in_flight), timeout)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._items.clear()
            self.queued_bytes = 0
            self._cond.notify_all()

    def _drop(self, chunk: _Chunk) -> None:
        if not self.dropped_chunks:
            logger.warning("stream send queue full (%d bytes): dropping the oldest audio", self.max_bytes)
        self.dropped_chunks += 1
        self.dropped_bytes += len(chunk.pcm)


# --------------------------------------------------------------------------- Socket.IO plumbing


class _OrderedEngineIO(engineio.Client):
    """The stock client starts a thread per incoming message, so two events can reach the
    handlers swapped; here one worker delivers messages and the final disconnect in order.
    `wait_sent` lets our sender keep at most one message in the library's unbounded queue."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._inbox: queue.Queue[tuple[str, tuple[Any, ...]]] = queue.Queue()
        self._worker: threading.Thread | None = None

    def _trigger_event(self, event: str, *args: Any, **kwargs: Any) -> Any:
        if event in ("message", "disconnect") and event in self.handlers:
            if self._worker is None:
                self._worker = threading.Thread(
                    target=self._deliver, name="valence-stream-events", daemon=True
                )
                self._worker.start()
            self._inbox.put((event, args))
            return None
        return super()._trigger_event(event, *args, **kwargs)

    def _deliver(self) -> None:
        while True:
            event, args = self._inbox.get()
            super()._trigger_event(event, *args, run_async=False)
            if event == "disconnect":
                return

    def wait_sent(self, stop: threading.Event) -> None:
        """Until every queued packet has been written (or the connection or we are done)."""
        pending = self.queue
        with pending.all_tasks_done:
            while pending.unfinished_tasks and self.state == "connected" and not stop.is_set():
                pending.all_tasks_done.wait(0.05)


class _SocketIOClient(socketio.Client):
    def _engineio_client_class(self) -> type[_OrderedEngineIO]:
        return _OrderedEngineIO


class _Link:
    """One Socket.IO connection and what we learnt on it."""

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.sio = _SocketIOClient(reconnection=False, handle_sigint=False)
        self.session_id: str | None = None
        self.refusal: ErrorEvent | None = None
        self.dropped = False
        self.settled = threading.Event()
        """Set once the session is up, or the connection is gone."""

    @property
    def ready(self) -> bool:
        return self.session_id is not None and not self.dropped

    def emit(self, message: dict[str, Any]) -> bool:
        try:
            self.sio.emit(EVENT_MESSAGE, message)
        except socketio.exceptions.SocketIOError:
            return False
        return True

    def wait_sent(self, stop: threading.Event) -> None:
        self.sio.eio.wait_sent(stop)

    def close(self, timeout_s: float = 5.0) -> None:
        """Disconnect; if a write is stuck on a server that stopped reading, cut the socket."""
        closer = threading.Thread(target=self._disconnect, name="valence-stream-close", daemon=True)
        closer.start()
        closer.join(timeout_s)
        sock = getattr(getattr(self.sio.eio, "ws", None), "sock", None)
        if closer.is_alive() and sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked send; close() alone would not
            closer.join(timeout_s)

    def _disconnect(self) -> None:
        try:
            self.sio.disconnect()
        except Exception as exc:  # noqa: BLE001 - closing must not raise; the link is dead anyway
            logger.debug("stream disconnect: %s", exc)


# --------------------------------------------------------------------------- audio sources


@dataclass(frozen=True)
class StreamReport:
    """What `stream_wav` queued: seconds of audio, bytes, chunks, and the sample rate."""

    audio_s: float
    bytes: int
    chunks: int
    sample_rate: int


PcmSource = str | os.PathLike[str] | Iterable[Any]


def _as_pcm(item: Any) -> bytes:
    if isinstance(item, bytes | bytearray | memoryview):
        return bytes(item)
    dtype = getattr(item, "dtype", None)
    if dtype is not None and str(dtype) == "int16":
        return bytes(item.astype("<i2", copy=False).tobytes())
    raise InvalidInputError(f"PCM items must be bytes or int16 arrays, not {type(item).__name__}")


def _file_chunks(path: Path, chunk_s: float) -> tuple[int, Iterator[bytes]]:
    import numpy as np
    import soundfile as sf

    try:
        rate = int(sf.info(str(path)).samplerate)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise InvalidInputError(f"{path.name} is not readable audio ({exc})") from exc

    def blocks() -> Iterator[bytes]:
        with sf.SoundFile(str(path)) as f:
            for block in f.blocks(blocksize=max(1, round(rate * chunk_s)), dtype="int16", always_2d=True):
                mono = block[:, 0] if block.shape[1] == 1 else np.round(block.mean(axis=1))
                yield mono.astype("<i2").tobytes()

    return rate, blocks()


def pcm_chunks(
    source: PcmSource, *, chunk_s: float = 0.1, sample_rate: int | None = None
) -> tuple[int, Iterator[bytes]]:
    """(sample rate, chunks of mono int16 PCM) from an audio file path or an iterator of int16
    PCM (bytes or numpy int16 arrays, at `sample_rate`, 44.1 kHz by default)."""
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.is_file():
            raise InvalidInputError(f"no such audio file: {path}")
        return _file_chunks(path, chunk_s)
    return sample_rate or DEFAULT_SAMPLE_RATE, (_as_pcm(item) for item in source)


# --------------------------------------------------------------------------- the connection


def _check_model(model: str) -> None:
    if model not in VALENCE_MODELS:
        raise InvalidInputError(f"Invalid model {model!r}. Must be one of: {sorted(VALENCE_MODELS)}")


class StreamConnection:
    """One logical stream; see the module docstring. Create it with `client.streaming.connect()`."""

    def __init__(
        self,
        websocket_url: str,
        api_key: str,
        model: str = "4emotions",
        *,
        sample_rate: int | None = None,
        max_queue_bytes: int = DEFAULT_QUEUE_BYTES,
        reconnect: ReconnectPolicy | None = None,
        transports: Sequence[str] = DEFAULT_TRANSPORTS,
        socketio_path: str = SOCKETIO_PATH,
        connect_timeout_s: float = 10.0,
        limiter: RateLimiter | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        _check_model(model)
        register_secret(api_key)
        self.websocket_url = websocket_url
        self._api_key = api_key
        self.model = model
        self.sample_rate = sample_rate
        self.reconnect_policy = reconnect or ReconnectPolicy()
        self.transports = list(transports)
        self.socketio_path = socketio_path
        self.connect_timeout_s = connect_timeout_s
        self._limiter = limiter
        self._rng = rng or random.Random()
        self._clock = clock
        self._sleep = sleep
        self._queue = SendQueue(max_queue_bytes)
        self._callbacks: dict[str, Callback | None] = dict.fromkeys(
            ("prediction", "error", "connected", "warning", "disconnected")
        )
        self._events: queue.Queue[tuple[str, Any] | None] = queue.Queue()
        self._lock = threading.Condition()
        self._link: _Link | None = None
        self._generation = 0
        self._started = False
        self._closed = threading.Event()
        self._dropped = threading.Event()
        self._threads: list[threading.Thread] = []
        self._counts: dict[str, int] = dict.fromkeys(
            ("connects", "reconnects", "reconnect_attempts", "predictions", "errors", "warnings"),
            0,
        ) | {"sent_chunks": 0, "sent_bytes": 0, "bad_events": 0}
        self.last_error: Exception | None = None

    # ------------------------------------------------------------------ SDK surface

    @property
    def api_key(self) -> str:
        return self._api_key

    def on_prediction(self, callback: Callback) -> Callback:
        """`callback(PredictionEvent)` for each prediction (one per 5 s of audio)."""
        self._callbacks["prediction"] = callback
        return callback

    def on_error(self, callback: Callback) -> Callback:
        """`callback(ErrorEvent)` for server errors, and when reconnecting is given up."""
        self._callbacks["error"] = callback
        return callback

    def on_connected(self, callback: Callback) -> Callback:
        """`callback(ConnectedEvent)` on every (re)connection, with the new `session_id`."""
        self._callbacks["connected"] = callback
        return callback

    def on_warning(self, callback: Callback) -> Callback:
        """`callback(WarningEvent)`, e.g. when the server ignored a malformed chunk."""
        self._callbacks["warning"] = callback
        return callback

    def on_disconnected(self, callback: Callback) -> Callback:
        """`callback(None)` when an established connection drops (a reconnect follows)."""
        self._callbacks["disconnected"] = callback
        return callback

    @property
    def connected(self) -> bool:
        link = self._link
        return link is not None and link.ready

    def connect(self) -> None:
        """Open the stream and wait for the server's `connected` event. Raises
        `AuthenticationError` (key refused), `RateLimitError` or `APIConnectionError`."""
        if self._closed.is_set():
            raise APIConnectionError("this stream was disconnected; create a new one", provider=PROVIDER)
        if self._started:
            return
        if not self._threads:
            self._start_thread(self._dispatch_loop, "events")
        self._open()
        self._started = True
        self._start_thread(self._send_loop, "sender")
        self._start_thread(self._supervise_loop, "reconnect")

    def send_audio(self, audio_data: bytes, *, block: bool = False, timeout: float | None = None) -> None:
        """Queue mono int16 PCM for sending. Never blocks unless `block=True` (see module
        docstring for what happens when the queue is full)."""
        if not self._started or self._closed.is_set():
            raise APIConnectionError("Not connected to WebSocket", provider=PROVIDER)
        self._put(_as_pcm(audio_data), self.sample_rate, block=block, timeout=timeout)

    def wait(self) -> None:
        """Block until `disconnect()` (from a callback or another thread) or until reconnecting
        is given up. Ctrl-C disconnects, as in the SDK."""
        try:
            while not self._closed.wait(0.5):
                pass
        except KeyboardInterrupt:
            logger.info("interrupted by user")
            self.disconnect()

    def disconnect(self) -> None:
        """Close now; audio still queued is discarded (call `flush()` first to send it)."""
        self._shutdown()

    # ------------------------------------------------------------------ beyond the SDK

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued chunk has been written to the socket; False on timeout."""
        return self._queue.wait_empty(timeout)

    def stream_wav(
        self,
        source: PcmSource,
        *,
        pace: float = 1.0,
        chunk_s: float = 0.1,
        sample_rate: int | None = None,
        timeout: float | None = None,
    ) -> StreamReport:
        """Send a whole file or PCM iterator at `pace` x real time (0: no pacing), waiting for
        queue room rather than dropping; `timeout` bounds each wait. Returns once all is queued."""
        if pace < 0 or chunk_s <= 0:
            raise InvalidInputError("pace must be >= 0 and chunk_s > 0")
        if not self._started or self._closed.is_set():
            raise APIConnectionError("Not connected to WebSocket", provider=PROVIDER)
        rate, chunks = pcm_chunks(source, chunk_s=chunk_s, sample_rate=sample_rate or self.sample_rate)
        start, size, count = self._clock(), 0, 0
        for pcm in chunks:
            size, count = size + len(pcm), count + 1
            if pace > 0:  # like a microphone: a chunk leaves once it has been "recorded"
                self._sleep_until(start + size / (SAMPLE_WIDTH * rate) / pace)
            self._put(pcm, rate, block=True, timeout=timeout)
        return StreamReport(audio_s=size / (SAMPLE_WIDTH * rate), bytes=size, chunks=count, sample_rate=rate)

    @property
    def stats(self) -> dict[str, int]:
        """Counters, plus the queue's `queued_bytes`, `max_queued_bytes` and drops."""
        with self._lock:
            counts = dict(self._counts)
        q = self._queue
        return counts | {
            "queued_bytes": q.queued_bytes,
            "max_queued_bytes": q.high_water,
            "max_queue_bytes": q.max_bytes,
            "dropped_chunks": q.dropped_chunks,
            "dropped_bytes": q.dropped_bytes,
        }

    @property
    def session_id(self) -> str | None:
        link = self._link
        return link.session_id if link is not None else None

    def __enter__(self) -> StreamConnection:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()

    def __repr__(self) -> str:
        return (
            f"StreamConnection(url={self.websocket_url!r}, model={self.model!r}, connected={self.connected})"
        )

    # ------------------------------------------------------------------ internals: sending

    def _put(self, pcm: bytes, rate: int | None, *, block: bool, timeout: float | None) -> None:
        if len(pcm) % SAMPLE_WIDTH:
            raise InvalidInputError(f"audio_data is {len(pcm)} bytes: not whole int16 samples")
        for start in range(0, len(pcm), MAX_CHUNK_BYTES):
            self._queue.put(_Chunk(pcm[start : start + MAX_CHUNK_BYTES], rate), block=block, timeout=timeout)

    def _sleep_until(self, deadline: float) -> None:
        delay = deadline - self._clock()
        if delay > 0:
            self._sleep(delay)

    def _send_loop(self) -> None:
        while (link := self._await_session()) is not None:
            chunk = self._queue.get(timeout=0.25)
            if chunk is None:
                continue
            message = AudioMessage.from_pcm(chunk.pcm, self.model, chunk.sample_rate).to_wire()
            if not link.ready or not link.emit(message):
                self._queue.requeue(chunk)
                continue
            link.wait_sent(self._closed)
            self._queue.done()
            self._count(sent_chunks=1, sent_bytes=len(chunk.pcm))

    def _await_session(self) -> _Link | None:
        with self._lock:
            while not self._closed.is_set():
                link = self._link
                if link is not None and link.ready:
                    return link
                self._lock.wait(0.25)
        return None

    # ------------------------------------------------------------------ internals: connecting

    def _open(self) -> _Link:
        if self._limiter is not None:
            self._limiter.acquire()  # a connection counts as one request on the server
        with self._lock:
            if self._closed.is_set():
                raise APIConnectionError("the stream is closed", provider=PROVIDER)
            self._generation += 1
            link = self._link = _Link(self._generation)
        self._bind(link)
        try:
            link.sio.connect(
                self.websocket_url,
                auth={"api_key": self._api_key},
                transports=self.transports,
                socketio_path=self.socketio_path,
                wait_timeout=self.connect_timeout_s,
            )
        except (socketio.exceptions.ConnectionError, ValueError) as exc:
            # The library's text goes into our (redacted) message; no chaining, no raw copy.
            raise APIConnectionError(
                f"streaming connection to {self.websocket_url} failed: {redact(str(exc))}", provider=PROVIDER
            ) from None
        if not link.settled.wait(self.connect_timeout_s):
            link.close()
            raise APIConnectionError(
                f"no `connected` event within {self.connect_timeout_s} s", provider=PROVIDER
            )
        if link.session_id is None or self._closed.is_set():
            link.close()
            raise self._refused(link)
        return link

    @staticmethod
    def _refused(link: _Link) -> Exception:
        refusal = link.refusal
        if refusal is None:
            return APIConnectionError("the server closed the stream before it started", provider=PROVIDER)
        if refusal.retry_after is not None:
            return RateLimitError(refusal.error, retry_after=refusal.retry_after, provider=PROVIDER)
        return AuthenticationError(refusal.error, error_code=refusal.error_code, provider=PROVIDER)

    def _supervise_loop(self) -> None:
        while True:
            self._dropped.wait()
            if self._closed.is_set():
                return
            self._dropped.clear()
            self._reconnect()

    def _reconnect(self) -> None:
        policy, attempt, retry_after = self.reconnect_policy, 0, 0.0
        while not self._closed.is_set():
            attempt += 1
            if policy.max_attempts is not None and attempt > policy.max_attempts:
                return self._give_up(f"gave up reconnecting after {policy.max_attempts} attempts")
            if retry_after > policy.max_retry_after_s:
                return self._give_up(f"rate limited for {retry_after:g} s; not waiting that long")
            delay = max(policy.delay(attempt, self._rng), retry_after)
            self._count(reconnect_attempts=1)
            logger.info("stream reconnect attempt %d in %.2f s", attempt, delay)
            if self._closed.wait(delay):
                return None
            try:
                self._open()
            except AuthenticationError as exc:
                return self._give_up(str(exc))
            except RateLimitError as exc:
                retry_after = exc.retry_after or 0.0
            except APIConnectionError as exc:
                retry_after = 0.0
                logger.info("stream reconnect attempt %d failed: %s", attempt, exc)
            else:
                self._count(reconnects=1)
                return None
        return None

    def _give_up(self, message: str) -> None:
        logger.warning("stream closed: %s", message)
        self.last_error = APIConnectionError(message, provider=PROVIDER)
        self._emit_user("error", ErrorEvent(error=message, error_code="RECONNECT_FAILED"))
        self._shutdown()

    def _shutdown(self) -> None:
        self._closed.set()
        self._dropped.set()
        self._queue.close()
        with self._lock:
            link, self._link = self._link, None
            self._lock.notify_all()
        if link is not None:
            link.close()
        self._events.put(None)
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=10)

    def _start_thread(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=f"valence-stream-{name}", daemon=True)
        self._threads.append(thread)
        thread.start()

    # ------------------------------------------------------------------ internals: events

    def _bind(self, link: _Link) -> None:
        sio = link.sio
        sio.on(EVENT_CONNECTED, lambda data: self._on_connected(link, data))
        sio.on(EVENT_PREDICTION, lambda data: self._on_event(link, "prediction", PredictionEvent, data))
        sio.on(EVENT_WARNING, lambda data: self._on_event(link, "warning", WarningEvent, data))
        sio.on(EVENT_ERROR, lambda data: self._on_error(link, data))
        sio.on("disconnect", lambda *_reason: self._on_disconnect(link))

    def _parse(self, model: type[E], data: Any) -> E | None:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            self._count(bad_events=1)
            logger.warning("ignoring malformed %s event: %s", model.__name__, exc.errors()[0]["msg"])
            return None

    def _on_connected(self, link: _Link, data: Any) -> None:
        event = self._parse(ConnectedEvent, data)
        if event is None:
            return
        with self._lock:
            link.session_id = event.session_id
            self._lock.notify_all()
        link.settled.set()
        self._count(connects=1)
        logger.info("stream connected: session %s", event.session_id)
        self._emit_user("connected", event)

    def _on_event(self, link: _Link, kind: str, model: type[StreamEvent], data: Any) -> None:
        event = self._parse(model, data)
        if event is not None:
            self._count(**{f"{kind}s": 1})
            self._emit_user(kind, event)

    def _on_error(self, link: _Link, data: Any) -> None:
        event = self._parse(ErrorEvent, data)
        if event is None:
            return
        if link.session_id is None:
            # An error before `connected` is the refusal. Its disconnect may never reach our
            # handler: python-socketio ignores a DISCONNECT that lands before `connect()` returns.
            link.refusal = event
            link.settled.set()
        self._count(errors=1)
        logger.warning("stream error from server: %s", event.error)
        self._emit_user("error", event)

    def _on_disconnect(self, link: _Link) -> None:
        with self._lock:
            had_session = link.session_id is not None and not link.dropped
            link.dropped = True
            current = link is self._link
            self._lock.notify_all()
        link.settled.set()
        if had_session and current and not self._closed.is_set():
            logger.info("stream connection dropped; reconnecting")
            self._emit_user("disconnected", None)
            self._dropped.set()

    def _emit_user(self, kind: str, event: Any) -> None:
        self._events.put((kind, event))

    def _dispatch_loop(self) -> None:
        while (item := self._events.get()) is not None:
            kind, event = item
            callback = self._callbacks.get(kind)
            if callback is None:
                continue
            try:
                callback(event)
            except Exception:  # a failing user callback must not kill the stream
                logger.exception("stream %s callback raised", kind)

    def _count(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                self._counts[name] += value


class StreamingAPI:
    """`client.streaming`: `connect(model)` returns an unopened `StreamConnection` (as in the
    SDK); an unknown model raises `ValueError` before anything touches the network."""

    def __init__(
        self, api_key: str, websocket_url: str, *, limiter: RateLimiter | None = None, **defaults: Any
    ) -> None:
        register_secret(api_key)
        self._api_key = api_key
        self.websocket_url = websocket_url
        self._limiter = limiter
        self._defaults = defaults

    @property
    def api_key(self) -> str:
        return self._api_key

    def connect(self, model: str = "4emotions", **options: Any) -> StreamConnection:
        _check_model(model)
        return StreamConnection(
            self.websocket_url, self._api_key, model, limiter=self._limiter, **(self._defaults | options)
        )

    def __repr__(self) -> str:
        return f"StreamingAPI(websocket_url={self.websocket_url!r})"
