"""Deterministic test data for the store: object versions, provider results, a processed call."""

from __future__ import annotations

import datetime as dt
import hashlib
import random
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from results_store import repository as repo
from results_store.models import (
    EmotionSegmentRecord,
    JobStatus,
    ProsodySummaryRecord,
    ProsodyUtteranceRecord,
    Provider,
    RecordingRecord,
    RecordingStatus,
    RunTrigger,
)
from results_store.records import JobIn, RecordingIn, RecordingRef, RunStart
from valence_client.models import (
    PROSODY_EXPRESSIONS,
    VALENCE_MODELS,
    EmotionSegment,
    ProsodyResult,
    ProsodyScores,
    ProsodyUtterance,
)

BUCKET = "calls"
RUN_ID = "0b6e7c8a-0000-4000-8000-000000000001"


def recording_in(
    n: int, *, bucket: str = BUCKET, sha256: str | None = None, key: str | None = None
) -> RecordingIn:
    return RecordingIn(
        bucket=bucket,
        key=key or f"2025/01/call-{n:04d}.wav",
        etag=f'"{n:032x}"',
        size_bytes=100_000 + n,
        version_id=f"ver-{n}",
        sha256=sha256 or hashlib.sha256(f"audio-{n}".encode()).hexdigest(),
        content_type="audio/wav",
        duration_s=30.0 + n,
        sample_rate=16_000,
        channels=1,
    )


def timeline(n: int, *, seed: int = 0) -> list[EmotionSegment]:
    rng = random.Random(seed)
    labels = VALENCE_MODELS["4emotions"]
    out = []
    for i in range(n):
        scores = [rng.random() for _ in labels]
        total = sum(scores)
        preds = {label: s / total for label, s in zip(labels, scores, strict=True)}
        top = max(preds, key=preds.__getitem__)
        out.append(
            EmotionSegment(
                start_s=i * 5.0,
                end_s=i * 5.0 + 5.0,
                emotion=top,
                confidence=preds[top],
                all_predictions=preds,
            )
        )
    return out


def prosody(external_id: str, n_utterances: int, *, seed: int = 0) -> ProsodyResult:
    rng = random.Random(seed)
    utterances = [
        ProsodyUtterance(
            text=f"utterance {i} of {external_id}",
            begin_s=i * 7.0,
            end_s=i * 7.0 + 6.5,
            expressions={name: round(rng.random(), 4) for name in PROSODY_EXPRESSIONS},
        )
        for i in range(n_utterances)
    ]
    scores = ProsodyScores(
        frustration=0.1, stress=0.2, politeness=0.8, hesitation=0.3, urgency=0.05 + seed / 100
    )
    return ProsodyResult(job_id=external_id, status="completed", emotions=scores, raw_predictions=utterances)


def start_run(session: Session, flow_run_id: str = RUN_ID, trigger: RunTrigger = RunTrigger.SCHEDULE) -> None:
    repo.start_run(
        session,
        RunStart(
            flow_run_id=flow_run_id,
            trigger=trigger,
            code_version="abc1234",
            settings_hash="f00dfeedf00dfeed",
            deployment="nightly",
        ),
    )


@dataclass(frozen=True)
class Processed:
    recording: RecordingRef
    valence_job: int
    valsea_job: int


def process(
    session: Session,
    recording: RecordingRef,
    *,
    flow_run_id: str = RUN_ID,
    segments: int = 4,
    utterances: int = 2,
    attempt: int = 0,
    channel: int | None = None,
) -> Processed:
    """What the pipeline does for one recording: a job per provider, results, completion."""
    tag = f"{recording.id}-{attempt}-{'' if channel is None else channel}"
    valence = repo.upsert_provider_job(
        session,
        JobIn(
            recording.id,
            Provider.VALENCE,
            "4emotions",
            f"req-{tag}",
            channel=channel,
            flow_run_id=flow_run_id,
        ),
    )
    repo.save_emotion_segments(
        session, valence, timeline(segments, seed=recording.id + attempt), flow_run_id=flow_run_id
    )
    repo.update_job(session, valence, status=JobStatus.COMPLETED)
    valsea = repo.upsert_provider_job(
        session,
        JobIn(
            recording.id,
            Provider.VALSEA,
            "valsea-prosody",
            f"job-{tag}",
            channel=channel,
            flow_run_id=flow_run_id,
        ),
    )
    repo.save_prosody_result(
        session,
        valsea,
        prosody(f"job-{tag}", utterances, seed=recording.id + attempt),
        flow_run_id=flow_run_id,
    )
    repo.update_job(session, valsea, status=JobStatus.COMPLETED)
    repo.set_recording_status(session, recording.id, RecordingStatus.COMPLETED)
    return Processed(recording, valence, valsea)


def count(session: Session, model: type, *where: sa.ColumnElement[bool]) -> int:
    return int(session.execute(sa.select(sa.func.count()).select_from(model).where(*where)).scalar_one())


# --------------------------------------------------------------------------- Parquet rows


def segment_records(
    recording_id: int, job_id: int, n: int, *, emotion: str | None = None, channel: int | None = None
) -> list[EmotionSegmentRecord]:
    return [
        EmotionSegmentRecord(
            recording_id=recording_id,
            source_uri=f"s3://{BUCKET}/call-{recording_id}.wav",
            source_version=f"ver-{recording_id}",
            provider_job_id=job_id,
            external_job_id=f"req-{job_id}",
            model="4emotions",
            channel=channel,
            segment_index=i,
            start_s=i * 5.0,
            end_s=i * 5.0 + 5.0,
            emotion=emotion or ("happy", "sad", "angry", "neutral")[(recording_id + i) % 4],
            confidence=0.5 + (i % 5) / 10,
            all_predictions={"happy": 0.1, "sad": 0.2, "angry": 0.3, "neutral": 0.4},
        )
        for i in range(n)
    ]


def utterance_records(recording_id: int, job_id: int, n: int) -> list[ProsodyUtteranceRecord]:
    return [
        ProsodyUtteranceRecord(
            recording_id=recording_id,
            source_uri=f"s3://{BUCKET}/call-{recording_id}.wav",
            source_version=f"ver-{recording_id}",
            provider_job_id=job_id,
            external_job_id=f"job-{job_id}",
            model="valsea-prosody",
            channel=None,
            utterance_index=i,
            text=f"utterance {i}",
            begin_s=i * 7.0,
            end_s=i * 7.0 + 6.0,
            expressions={name: (k + i) / 100 for k, name in enumerate(PROSODY_EXPRESSIONS)},
        )
        for i in range(n)
    ]


def summary_record(recording_id: int, job_id: int) -> ProsodySummaryRecord:
    return ProsodySummaryRecord(
        recording_id=recording_id,
        source_uri=f"s3://{BUCKET}/call-{recording_id}.wav",
        source_version=f"ver-{recording_id}",
        provider_job_id=job_id,
        external_job_id=f"job-{job_id}",
        model="valsea-prosody",
        channel=None,
        frustration=0.1,
        stress=0.2,
        politeness=0.3,
        hesitation=0.4,
        urgency=0.5,
    )


def recording_record(recording_id: int, status: str = "completed") -> RecordingRecord:
    return RecordingRecord(
        recording_id=recording_id,
        source_uri=f"s3://{BUCKET}/call-{recording_id}.wav",
        source_version=f"ver-{recording_id}",
        bucket=BUCKET,
        key=f"call-{recording_id}.wav",
        version_id=f"ver-{recording_id}",
        etag=f"{recording_id:032x}",
        size_bytes=1000,
        sha256=None,
        content_type="audio/wav",
        duration_s=20.0,
        sample_rate=16000,
        channels=1,
        status=status,
        reason=None,
        discovered_at=dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
        processed_at=dt.datetime(2025, 1, 2, tzinfo=dt.UTC),
    )
