"""Protocol models for both providers: the one contract shared by client and emulator.

Every documented response shape is accepted and normalised into one (see
`../shared/API_REFERENCE.md`): both discrete shapes become `DiscreteResult`, both timeline
shapes become `EmotionSegment`. The emulator builds its answers from these same models, so a
shape the client cannot parse cannot be served either.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

ValenceModel = Literal["4emotions", "7emotions"]
VALENCE_MODELS: dict[str, tuple[str, ...]] = {
    "4emotions": ("angry", "happy", "neutral", "sad"),
    "7emotions": ("happy", "sad", "angry", "neutral", "surprised", "disgusted", "calm"),
}
DEFAULT_VALENCE_MODEL: ValenceModel = "4emotions"
"""What the API analyses with when it is told no model (the async upload sends none)."""
SEGMENT_SECONDS = 5.0
"""The async API classifies one segment per 5 s of audio."""

AsyncStatusValue = Literal["initiated", "upload_completed", "processing", "completed", "failed"]
ValseaStatusValue = Literal["queued", "in_progress", "completed", "failed"]

PROSODY_METRICS: tuple[str, ...] = ("frustration", "stress", "politeness", "hesitation", "urgency")
PROSODY_EXPRESSIONS: tuple[str, ...] = (
    "Admiration", "Adoration", "Aesthetic Appreciation", "Amusement", "Anger", "Anxiety", "Awe",
    "Awkwardness", "Boredom", "Calmness", "Concentration", "Confusion", "Contemplation",
    "Contempt", "Contentment", "Craving", "Desire", "Determination", "Disappointment", "Disgust",
    "Distress", "Doubt", "Ecstasy", "Embarrassment", "Empathic Pain", "Entrancement", "Envy",
    "Excitement", "Fear", "Guilt", "Horror", "Interest", "Joy", "Love", "Nostalgia", "Pain",
    "Pride", "Realization", "Relief", "Romance", "Sadness", "Satisfaction", "Shame",
    "Surprise (negative)", "Surprise (positive)", "Sympathy", "Tiredness", "Triumph",
)  # fmt: skip
"""The 48 named expression scores of a verbose Valsea utterance, in wire order."""
SHARED_NAMES: dict[str, str] = {name: name for name in PROSODY_EXPRESSIONS}
"""One copy of each name that recurs in every utterance or stored row (the 48 expressions,
the emotions, field names), held for the life of the process: ~19 MiB saved on 9 h of audio.
Not `sys.intern`: names like "Empathic Pain" stay interned only while something holds them,
so a long night of short calls interned and dropped them thousands of times, and that churn
through CPython's interned-string table made it double its size (1.8 MiB) partway through."""
SHARED_NAMES_MAX = 4096
"""Past this many names, a new one is not kept (arbitrary names must not grow the process)."""


def shared_name(name: str) -> str:
    """The one copy of `name` (see `SHARED_NAMES`)."""
    held = SHARED_NAMES.get(name)
    if held is None:
        held = SHARED_NAMES.setdefault(name, name) if len(SHARED_NAMES) < SHARED_NAMES_MAX else name
    return held


class _Model(BaseModel):
    # Providers add fields over time; unknown ones are kept rather than rejected.
    model_config = ConfigDict(extra="allow", populate_by_name=True)


def parse_clock(value: str) -> float:
    """'00:05' -> 5.0, '01:02:03' -> 3723.0 (the `t` field of the 002 timeline shape)."""
    seconds = 0.0
    for part in value.strip().split(":"):
        seconds = seconds * 60 + float(part)
    return seconds


def format_clock(seconds: float) -> str:
    """Inverse of `parse_clock` for whole seconds: 5 -> '00:05', 3723 -> '01:02:03'."""
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


# --------------------------------------------------------------------------- Valence


class DiscreteResult(_Model):
    """Discrete answer. Accepts `{main_emotion, confidence, all_predictions}` (002) and
    `{emotions: {...}, dominant_emotion}` (000)."""

    main_emotion: str
    confidence: float
    all_predictions: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, data: Any) -> Any:
        if isinstance(data, dict) and "main_emotion" not in data and "emotions" in data:
            scores = dict(data["emotions"])
            dominant = data.get("dominant_emotion") or max(scores, key=scores.__getitem__)
            return {
                "main_emotion": dominant,
                "confidence": scores.get(dominant, 0.0),
                "all_predictions": scores,
            }
        return data


class EmotionSegment(_Model):
    """One timeline entry. Accepts `{t: "00:05", emotion, confidence}` (002) and
    `{timestamp, start_time, end_time, emotion, confidence, all_predictions}` (000)."""

    start_s: float
    end_s: float
    emotion: str
    confidence: float
    all_predictions: dict[str, float] | None = None

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "start_s" in data:
            return data
        out = {k: v for k, v in data.items() if k not in {"t", "timestamp", "start_time", "end_time"}}
        if "start_time" in data:
            out["start_s"] = float(data["start_time"])
            out["end_s"] = float(data.get("end_time", out["start_s"] + SEGMENT_SECONDS))
        elif "t" in data:
            out["start_s"] = parse_clock(str(data["t"]))
            out["end_s"] = out["start_s"] + SEGMENT_SECONDS
        elif "timestamp" in data:
            out["start_s"] = float(data["timestamp"])
            out["end_s"] = out["start_s"] + SEGMENT_SECONDS
        return out

    def to_wire_000(self) -> dict[str, Any]:
        """The SDK README (000) shape; what the public SDK's timeline helpers index into."""
        entry: dict[str, Any] = {
            "timestamp": (self.start_s + self.end_s) / 2,
            "start_time": self.start_s,
            "end_time": self.end_s,
            "emotion": self.emotion,
            "confidence": self.confidence,
        }
        if self.all_predictions is not None:
            entry["all_predictions"] = self.all_predictions
        return entry

    def to_wire_002(self) -> dict[str, Any]:
        """The feature-overview (002) shape."""
        return {"t": format_clock(self.start_s), "emotion": self.emotion, "confidence": self.confidence}


class AsyncStatus(_Model):
    request_id: str | None = None
    status: AsyncStatusValue
    emotions: list[EmotionSegment] = Field(default_factory=list)

    @property
    def model(self) -> str | None:
        """The model that produced this timeline: a `model` field if the server sends one,
        else the model whose label set the comprehensive predictions cover, else None."""
        reported = (self.model_extra or {}).get("model")
        if isinstance(reported, str) and reported:
            return reported
        return timeline_model(self.emotions)


def model_of_labels(labels: Iterable[str]) -> str | None:
    """The Valence model with exactly these emotion labels, or None."""
    names = frozenset(labels)
    for model, known in VALENCE_MODELS.items():
        if names == frozenset(known):
            return model
    return None


def timeline_model(segments: Iterable[EmotionSegment]) -> str | None:
    """The model a timeline came from, read off its `all_predictions` label set (present with
    `comprehensive_output=true`); None when no segment carries them or the labels are unknown.

    The async upload names no model, so this evidence is the only honest answer we have.
    """
    for segment in segments:
        if segment.all_predictions:
            return model_of_labels(segment.all_predictions)
    return None


class PresignedPart(_Model):
    part_number: int
    url: str


class InitiateResponse(_Model):
    upload_id: str
    request_id: str
    presigned_urls: list[PresignedPart]


class CompletedPart(_Model):
    ETag: str
    PartNumber: int


class CompleteRequest(_Model):
    request_id: str
    upload_id: str
    parts: list[CompletedPart]


class RateLimitWindow(_Model):
    limit: int
    remaining: int
    reset: float | int | str | None = None


class RateLimitStatus(_Model):
    """`/v1/rate-limit/status`. `limits` mixes windows and the optional `max_audio_size_mb`
    number on the wire; here they are split."""

    limits: dict[str, RateLimitWindow] = Field(default_factory=dict)
    max_audio_size_mb: float | None = None
    current_usage: dict[str, int] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _split(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("limits"), dict):
            limits = dict(data["limits"])
            max_mb = limits.pop("max_audio_size_mb", None)
            data = {**data, "limits": limits}
            if max_mb is not None:
                data["max_audio_size_mb"] = max_mb
        return data

    def to_wire(self) -> dict[str, Any]:
        limits: dict[str, Any] = {name: w.model_dump() for name, w in self.limits.items()}
        if self.max_audio_size_mb is not None:
            limits["max_audio_size_mb"] = self.max_audio_size_mb
        return {"limits": limits, "current_usage": self.current_usage}


class HealthStatus(_Model):
    status: str
    timestamp: str | float | None = None


class ValenceErrorBody(_Model):
    """400 validation body: `{error, error_code, min/max_duration_seconds, actual_duration_seconds}`."""

    error: str = ""
    error_code: str | None = None
    min_duration_seconds: float | None = None
    max_duration_seconds: float | None = None
    actual_duration_seconds: float | None = None


# --------------------------------------------------------------------------- Valsea


class ProsodyJob(_Model):
    job_id: str
    status: ValseaStatusValue


class ProsodyScores(_Model):
    frustration: float
    stress: float
    politeness: float
    hesitation: float
    urgency: float


class ProsodyUtterance(_Model):
    """One verbose utterance. The wire's `emotions` is the 48-score array, either bare numbers
    in `PROSODY_EXPRESSIONS` order or `{name, score}` objects; both become a name -> score map."""

    text: str = ""
    begin_s: float
    end_s: float
    expressions: dict[str, float]

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "begin_s" in data:
            return data
        time = data.get("time") or {}
        raw = data.get("emotions") or []
        if raw and isinstance(raw[0], dict):
            expressions = {shared_name(str(e["name"])): float(e["score"]) for e in raw}
        else:
            expressions = {name: float(score) for name, score in zip(PROSODY_EXPRESSIONS, raw, strict=False)}
        return {
            "text": data.get("text", ""),
            "begin_s": float(time.get("begin", 0.0)),
            "end_s": float(time.get("end", 0.0)),
            "expressions": expressions,
        }

    def to_wire(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "time": {"begin": self.begin_s, "end": self.end_s},
            "emotions": [{"name": n, "score": s} for n, s in self.expressions.items()],
        }


class ProsodyResult(_Model):
    job_id: str
    status: ValseaStatusValue
    emotions: ProsodyScores
    raw_predictions: list[ProsodyUtterance] = Field(default_factory=list)


def prosody_object_hook(obj: dict[str, Any]) -> Any:
    """`json.loads` object hook for a Valsea result: each utterance becomes its model as soon
    as it is decoded, so its 48 `{name, score}` objects are dropped at once rather than all of
    them living until the parse ends (a 9 h result holds ~320,000: ~90 MiB as dicts).
    Anything that does not validate stays a dict, for `ProsodyResult` to report."""
    if "time" in obj and "emotions" in obj:
        try:
            return ProsodyUtterance.model_validate(obj)
        except ValidationError:
            pass
    return obj


class ValseaErrorBody(_Model):
    error: str | dict[str, Any] | None = None
    message: str | None = None
