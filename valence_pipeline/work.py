"""The small, typed values that flow between the pipeline's steps (no clients, sessions, streams).

A step reads what it needs from the database (`RecordingState`, `DueJob`), does one thing, and
writes the next state back; nothing here outlives the step that made it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from valence_pipeline.audio import AudioInfo, Route
from valence_pipeline.s3 import ObjectVersion
from valence_pipeline.settings import Settings

Provider = Literal["valence", "valsea"]
Mode = Literal["discrete", "async", "prosody"]


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

    @property
    def slot(self) -> tuple[str, int | None]:
        """What identifies this call among its recording's calls."""
        return (self.provider, self.channel)


@dataclass(frozen=True)
class RecordingState:
    """One recording version as the database knows it, when a worker takes it on."""

    id: int
    obj: ObjectVersion
    status: str
    attempts: int
    info: AudioInfo | None = None
    sha256: str | None = None
    route: Route | None = None

    @property
    def uri(self) -> str:
        return self.obj.uri


def plan_work(state: RecordingState, settings: Settings) -> list[WorkItem]:
    """The provider calls one accepted recording needs: per provider, per channel when split.

    Deterministic from the stored verdict and the settings, so any worker (the harvester that
    finishes a recording, a run resuming after a crash) computes the same plan.
    """
    assert state.info is not None and state.sha256 is not None and state.route is not None
    info = state.info
    channels: list[int | None] = (
        list(range(info.channels)) if settings.channel_mode == "split" and info.channels > 1 else [None]
    )
    items: list[WorkItem] = []
    for channel in channels:
        for provider in settings.providers:
            mode: Mode = state.route if provider == "valence" else "prosody"
            model = settings.valence_model if provider == "valence" else "valsea-prosody"
            items.append(WorkItem(state.id, state.obj, info, state.sha256, provider, mode, model, channel))
    return items


@dataclass(frozen=True)
class DueJob:
    """A provider job whose result is due to be asked for (claimed by one harvester)."""

    id: int
    recording_id: int
    provider: Provider
    external_id: str
    channel: int | None
    polls: int
    submitted_at: float
    duration_s: float
    resubmitted: bool = False
