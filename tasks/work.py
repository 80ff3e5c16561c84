"""The small, typed values that flow between tasks (no clients, sessions or streams)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from valence_client.models import EmotionSegment, ProsodyResult
from valence_pipeline.audio import AudioInfo
from valence_pipeline.s3 import ObjectVersion

Provider = Literal["valence", "valsea"]
Mode = Literal["discrete", "async", "prosody"]
JobState = Literal["submitted", "completed", "failed", "skipped"]


@dataclass(frozen=True)
class WorkItem:
    """One provider call to make for one recording (and one channel when calls are split)."""

    recording_id: int
    obj: ObjectVersion
    info: AudioInfo
    sha256: str
    provider: Provider
    mode: Mode
    model: str
    channel: int | None = None

    @property
    def label(self) -> str:
        suffix = f" ch{self.channel}" if self.channel is not None else ""
        return f"{self.provider}/{self.mode} {self.obj.uri}{suffix}"


@dataclass
class JobHandle:
    """A provider job after submission: in flight (`submitted`) or already final."""

    item: WorkItem
    job_id: int
    external_id: str | None
    state: JobState
    submitted_at: float = 0.0
    segments: list[EmotionSegment] = field(default_factory=list)
    prosody: ProsodyResult | None = None
    error_code: str | None = None
    error_message: str | None = None
    resubmitted: bool = False
