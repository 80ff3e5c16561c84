"""The streaming API's wire contract (Socket.IO), shared by the client and the emulator.

Kept apart from `valence_client.models` only because it has its own transport; like those
models it imports nothing but pydantic, so the emulator can use it without the client.

Client -> server, event ``message``::

    {"service": "emotion", "action": "prediction", "model": "4emotions",
     "payload": "<base64 of mono int16 little-endian PCM>", "sample_rate": 44100}

``sample_rate`` is optional (the public SDK never sends it); without it the server assumes
44.1 kHz, the rate the provider recommends and the SDK's microphone example records at.

Server -> client: ``connected`` ``{"session_id"}``, ``prediction`` ``{"main_emotion",
"confidence", "all_predictions", "timestamp"}``, ``error`` ``{"error"}``, ``warning``
``{"message"}``. Our emulator adds fields a client may use but must not need: ``start_time`` /
``end_time`` (seconds into the session's audio) on predictions, ``error_code`` and
``retry_after`` on errors.

Event models accept item access (``data["main_emotion"]``) so callbacks written for the
public SDK, which hands them dicts, keep working.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from valence_client.models import SEGMENT_SECONDS, ValenceModel

SOCKETIO_PATH = "socket.io"
DEFAULT_SAMPLE_RATE = 44100
"""Assumed when a message carries no ``sample_rate`` (the public SDK sends none)."""
WINDOW_SECONDS = SEGMENT_SECONDS
"""The emulator answers one prediction per 5 s of received audio, like the async segments."""
SAMPLE_WIDTH = 2
"""Bytes per sample: mono int16."""
MAX_SAMPLE_RATE = 384_000

EVENT_MESSAGE = "message"
EVENT_CONNECTED = "connected"
EVENT_PREDICTION = "prediction"
EVENT_ERROR = "error"
EVENT_WARNING = "warning"


class AudioMessage(BaseModel):
    """One audio chunk as sent by a client."""

    model_config = ConfigDict(extra="allow")

    service: Literal["emotion"]
    action: Literal["prediction"]
    model: ValenceModel
    payload: str = Field(min_length=1)
    sample_rate: int | None = Field(default=None, gt=0, le=MAX_SAMPLE_RATE)

    @classmethod
    def from_pcm(cls, pcm: bytes, model: str, sample_rate: int | None = None) -> AudioMessage:
        encoded = base64.b64encode(pcm).decode("ascii")
        return cls.model_validate(
            {
                "service": "emotion",
                "action": "prediction",
                "model": model,
                "payload": encoded,
                "sample_rate": sample_rate,
            }
        )

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)

    def pcm(self) -> bytes:
        """The decoded samples; `ValueError` unless strict base64 of whole int16 samples."""
        try:
            raw = base64.b64decode(self.payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("payload is not valid base64") from exc
        if not raw:
            raise ValueError("payload is empty")
        if len(raw) % SAMPLE_WIDTH:
            raise ValueError(f"payload is {len(raw)} bytes, not whole int16 samples")
        return raw


class StreamEvent(BaseModel):
    """Base of the server's events: unknown fields kept, SDK-style item access."""

    model_config = ConfigDict(extra="allow")

    def __getitem__(self, name: str) -> Any:
        if name in type(self).model_fields:
            return getattr(self, name)
        extra = self.model_extra or {}
        if name in extra:
            return extra[name]
        raise KeyError(name)

    def get(self, name: str, default: Any = None) -> Any:
        try:
            return self[name]
        except KeyError:
            return default


class ConnectedEvent(StreamEvent):
    session_id: str


class PredictionEvent(StreamEvent):
    main_emotion: str
    confidence: float
    all_predictions: dict[str, float] = Field(default_factory=dict)
    timestamp: int | float | str | None = None
    start_time: float | None = None
    end_time: float | None = None


class ErrorEvent(StreamEvent):
    error: str
    error_code: str | None = None
    retry_after: float | None = None


class WarningEvent(StreamEvent):
    message: str


def window_bytes(sample_rate: int) -> int:
    """Bytes of PCM in one prediction window at `sample_rate`."""
    return round(WINDOW_SECONDS * sample_rate) * SAMPLE_WIDTH
