"""Timelines built to have a known answer, and a way to store them as a processed call."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy.orm import Session

from results_store import repository as repo
from results_store.models import JobStatus, PipelineRun, Provider, RecordingStatus
from results_store.records import JobIn, RecordingIn
from tests.store.factories import RUN_ID, start_run
from valence_client.models import (
    VALENCE_MODELS,
    EmotionSegment,
    ProsodyResult,
    ProsodyScores,
    ProsodyUtterance,
)

PROCESSED = dt.datetime(2026, 11, 21, 2, 30, tzinfo=dt.UTC)


def timeline(emotions: Sequence[str], confidence: float = 0.8) -> list[EmotionSegment]:
    """One 5 s segment per emotion, with every label's score (as comprehensive output has)."""
    labels = VALENCE_MODELS["4emotions"]
    out = []
    for i, emotion in enumerate(emotions):
        rest = (1 - confidence) / (len(labels) - 1)
        preds = {label: (confidence if label == emotion else rest) for label in labels}
        out.append(
            EmotionSegment(
                start_s=i * 5.0,
                end_s=i * 5.0 + 5.0,
                emotion=emotion,
                confidence=confidence,
                all_predictions=preds,
            )
        )
    return out


NEUTRAL_THEN_ANGRY = timeline(["neutral"] * 8 + ["angry"] * 4)  # 60 s: the last third is angry
CALM_CALL = timeline(["neutral", "happy"] * 6)  # 60 s, no negative segment at all


def prosody(frustration: float, utterances: Sequence[tuple[float, float, dict[str, float]]]) -> ProsodyResult:
    return ProsodyResult(
        job_id="x",
        status="completed",
        emotions=ProsodyScores(
            frustration=frustration, stress=0.2, politeness=0.5, hesitation=0.1, urgency=0.3
        ),
        raw_predictions=[
            ProsodyUtterance(text=f"u{i}", begin_s=b, end_s=e, expressions=x)
            for i, (b, e, x) in enumerate(utterances)
        ],
    )


def store_call(
    session: Session,
    key: str,
    timelines: dict[int | None, list[EmotionSegment]],
    prosodies: dict[int | None, ProsodyResult] | None = None,
    *,
    n: int = 1,
    channels: int = 1,
    model: str | None = None,
) -> int:
    """A completed recording with one Valence job (and Valsea job) per channel key."""
    if session.get(PipelineRun, RUN_ID) is None:
        start_run(session)
    ref = repo.upsert_recording(
        session,
        RecordingIn(
            bucket="calls",
            key=key,
            etag=f'"{n:032x}"',
            size_bytes=1000 + n,
            version_id=f"v{n}",
            sha256=f"{n:064x}",
            content_type="audio/wav",
            duration_s=60.0,
            sample_rate=16000,
            channels=channels,
        ),
    )
    for channel, segments in timelines.items():
        job = repo.upsert_provider_job(
            session,
            JobIn(
                recording_id=ref.id,
                provider=Provider.VALENCE,
                model=model,
                external_id=f"req-{n}-{channel}",
                status=JobStatus.COMPLETED,
                channel=channel,
                flow_run_id=RUN_ID,
            ),
        )
        repo.save_emotion_segments(session, job, segments, flow_run_id=RUN_ID)
    for channel, result in (prosodies or {}).items():
        job = repo.upsert_provider_job(
            session,
            JobIn(
                recording_id=ref.id,
                provider=Provider.VALSEA,
                model="valsea-prosody",
                external_id=f"job-{n}-{channel}",
                status=JobStatus.COMPLETED,
                channel=channel,
                flow_run_id=RUN_ID,
            ),
        )
        repo.save_prosody_result(session, job, result, flow_run_id=RUN_ID)
    repo.set_recording_status(session, ref.id, RecordingStatus.COMPLETED, at=PROCESSED)
    return ref.id
