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
    def requested_model(self) -> str | None:
        """The model named to the provider: None for a Valence async upload, which (as in the
        public SDK) names none; the job learns its model from the result instead."""
        return None if self.mode == "async" else self.model

    @property
    def label(self) -> str:
        suffix = f" ch{self.channel}" if self.channel is not None else ""
        return f"{self.provider}/{self.mode} {self.obj.uri}{suffix}"


class Results:
    """What a finished job brought back (a Valence timeline, a Valsea result).

    A plain class on purpose, not a list, dataclass or model: Prefect walks every list, dict,
    dataclass and pydantic model in a task's parameters looking for futures, with bookkeeping
    per object it meets. A 9 h recording's results are ~330,000 objects, so handing its
    handles to `persist` cost ~40 MiB and seconds of CPU. A plain object is one leaf to it.
    """

    __slots__ = ("prosody", "segments")

    def __init__(
        self, segments: list[EmotionSegment] | None = None, prosody: ProsodyResult | None = None
    ) -> None:
        self.segments: list[EmotionSegment] = segments if segments is not None else []
        self.prosody = prosody


@dataclass
class JobHandle:
    """A provider job after submission: in flight (`submitted`) or already final."""

    item: WorkItem
    job_id: int
    external_id: str | None
    state: JobState
    submitted_at: float = 0.0
    error_code: str | None = None
    error_message: str | None = None
    resubmitted: bool = False
    results: Results = field(default_factory=Results, repr=False, compare=False)

    @property
    def segments(self) -> list[EmotionSegment]:
        return self.results.segments

    @segments.setter
    def segments(self, value: list[EmotionSegment]) -> None:
        self.results.segments = value

    @property
    def prosody(self) -> ProsodyResult | None:
        return self.results.prosody

    @prosody.setter
    def prosody(self, value: ProsodyResult | None) -> None:
        self.results.prosody = value

    def release(self) -> None:
        """Drop the results once they are stored: the flow keeps its handles (and Prefect the
        task states holding them) until the run ends, and the export needs the memory."""
        self.results = Results()
