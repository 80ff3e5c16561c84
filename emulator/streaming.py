"""The streaming API: a Socket.IO server (python-socketio, ASGI) beside the HTTP routes.

`socketio_app(http_app)` serves ``/socket.io/`` on the same host and port as the HTTP API and
passes every other path to `http_app`. Protocol: `valence_client.stream_protocol`.

- **Auth**: ``connect(url, auth={"api_key": KEY})``. The connection is accepted first
  (``always_connect``), so a refused client gets an ``error`` event it can read, then the
  server disconnects it. A good key gets ``connected`` ``{"session_id"}``.
- **Audio**: each ``message`` chunk (base64 int16 mono PCM) is appended to the session's
  buffer; every full 5 s of audio becomes one ``prediction`` (the async path's predictor,
  `emulator.audio`, applied to the window) and one ``valence_stream`` ledger entry. A partial
  window left at disconnect is dropped, unpredicted and unbilled.
- **Malformed chunks** (wrong shape, unknown model, bad base64, odd byte count, a sample rate
  change mid-window) are dropped with a ``warning`` ``{"message"}``; the session goes on.
- **Rate limits**: the HTTP API's per-key limiter. A connection counts as one request, each
  prediction as one more. Refused at connect: ``error`` (``error_code: RATE_LIMITED``,
  ``retry_after``) then disconnect; refused at a prediction: ``error`` and the window is
  dropped, the session stays open.

Events of one connection are handled one at a time (``async_handlers=False``), so chunks land
in the buffer in the order they were sent and a client that sends faster than we predict is
slowed by TCP rather than by our memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import socketio
from pydantic import ValidationError

from emulator import audio
from emulator.gate import ASGIApp
from emulator.state import EmulatorState, key_id
from valence_client.stream_protocol import (
    DEFAULT_SAMPLE_RATE,
    EVENT_CONNECTED,
    EVENT_ERROR,
    EVENT_MESSAGE,
    EVENT_PREDICTION,
    EVENT_WARNING,
    SOCKETIO_PATH,
    WINDOW_SECONDS,
    AudioMessage,
    ConnectedEvent,
    ErrorEvent,
    PredictionEvent,
    WarningEvent,
    window_bytes,
)

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 8 * 1024 * 1024
"""Engine.IO refuses bigger packets (about 60 s of 44.1 kHz audio once base64-encoded)."""


@dataclass
class Session:
    session_id: str
    owner: str
    model: str = "4emotions"
    sample_rate: int | None = None
    buffer: bytearray = field(default_factory=bytearray)
    offset_s: float = 0.0
    """Seconds of audio before the buffer's first sample (predicted or dropped windows)."""


def predict_window(pcm: bytes, sample_rate: int, model: str) -> tuple[str, float, dict[str, float]]:
    """(main emotion, confidence, scores) of one window of int16 PCM: the clip is analysed on
    its own, exactly as a 5 s WAV of the same samples would be by the discrete route."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    result = audio.discrete_result(audio.analyse_samples(samples, sample_rate), model)
    return result.main_emotion, result.confidence, result.all_predictions


class StreamServer:
    """Event handlers of the Socket.IO server; sessions by Socket.IO sid."""

    def __init__(self, sio: socketio.AsyncServer, state: EmulatorState) -> None:
        self.sio = sio
        self.state = state
        self.sessions: dict[str, Session] = {}

    # ------------------------------------------------------------------ connection

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> bool:
        key = auth.get("api_key") if isinstance(auth, dict) else None
        if not isinstance(key, str) or key not in self.state.valence_keys:
            self._log_connect(None, 401)
            await self._error(sid, "Invalid or missing API key (auth: {'api_key': ...})", "INVALID_API_KEY")
            return False
        owner = key_id(key)
        admission = self.state.valence_limiter.admit(owner)
        if not admission.allowed:
            self._log_connect(owner, 429)
            await self._error(sid, "rate limit exceeded", "RATE_LIMITED", admission.retry_after)
            return False
        session = Session(session_id=uuid.uuid4().hex, owner=owner)
        self.sessions[sid] = session
        self._log_connect(owner, 101)
        await self.sio.emit(
            EVENT_CONNECTED, ConnectedEvent(session_id=session.session_id).model_dump(), to=sid
        )
        return True

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        session = self.sessions.pop(sid, None)
        if session is not None and session.buffer:
            log.info("stream %s closed with %d unpredicted bytes", session.session_id, len(session.buffer))

    # ------------------------------------------------------------------ audio

    async def on_message(self, sid: str, data: Any) -> None:
        session = self.sessions.get(sid)
        if session is None:
            return
        try:
            message = AudioMessage.model_validate(data)
            pcm = message.pcm()
        except (ValidationError, ValueError) as exc:
            await self._warn(sid, f"chunk ignored: {_reason(exc)}")
            return
        rate = message.sample_rate or session.sample_rate or DEFAULT_SAMPLE_RATE
        if session.buffer and rate != session.sample_rate:
            await self._warn(sid, f"chunk ignored: sample_rate {rate} differs from {session.sample_rate}")
            return
        session.sample_rate, session.model = rate, message.model
        session.buffer += pcm
        size = window_bytes(rate)
        while len(session.buffer) >= size:
            window = bytes(session.buffer[:size])
            del session.buffer[:size]
            await self._window(sid, session, window, rate)
            session.offset_s += WINDOW_SECONDS

    async def _window(self, sid: str, session: Session, window: bytes, rate: int) -> None:
        admission = self.state.valence_limiter.admit(session.owner)
        if not admission.allowed:
            await self._error(
                sid, "rate limit exceeded; window dropped", "RATE_LIMITED", admission.retry_after
            )
            return
        main, confidence, scores = await asyncio.to_thread(predict_window, window, rate, session.model)
        event = PredictionEvent(
            main_emotion=main,
            confidence=confidence,
            all_predictions=scores,
            timestamp=int(time.time()),
            start_time=session.offset_s,
            end_time=session.offset_s + WINDOW_SECONDS,
        )
        self.state.bill(
            "valence_stream",
            session.owner,
            sha256=hashlib.sha256(window).hexdigest(),
            duration_s=WINDOW_SECONDS,
            size=len(window),
            model=session.model,
            session_id=session.session_id,
            start_time=session.offset_s,
        )
        await self.sio.emit(EVENT_PREDICTION, event.model_dump(exclude_none=True), to=sid)

    # ------------------------------------------------------------------ helpers

    async def _error(self, sid: str, text: str, code: str, retry_after: float | None = None) -> None:
        event = ErrorEvent(error=text, error_code=code, retry_after=retry_after)
        await self.sio.emit(EVENT_ERROR, event.model_dump(exclude_none=True), to=sid)

    async def _warn(self, sid: str, text: str) -> None:
        await self.sio.emit(EVENT_WARNING, WarningEvent(message=text).model_dump(), to=sid)

    def _log_connect(self, owner: str | None, status: int) -> None:
        self.state.log_request(
            {
                "at": time.time(),
                "method": "SOCKETIO",
                "path": f"/{SOCKETIO_PATH}/",
                "query": "",
                "provider": "valence",
                "route": "stream-connect",
                "key": owner,
                "status": status,
                "fault": None,
            }
        )


def _reason(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "message"
        return f"{where}: {first['msg']}"
    return str(exc)


def socketio_app(http_app: Any, state: EmulatorState) -> ASGIApp:
    """`http_app` with the streaming endpoint at ``/socket.io/`` in front of it."""
    sio = socketio.AsyncServer(
        async_mode="asgi",
        always_connect=True,
        async_handlers=False,
        max_http_buffer_size=MAX_MESSAGE_BYTES,
        logger=False,
        engineio_logger=False,
    )
    server = StreamServer(sio, state)
    sio.on("connect", server.on_connect)
    sio.on("disconnect", server.on_disconnect)
    sio.on(EVENT_MESSAGE, server.on_message)
    app: ASGIApp = socketio.ASGIApp(sio, other_asgi_app=http_app, socketio_path=SOCKETIO_PATH)
    return app
