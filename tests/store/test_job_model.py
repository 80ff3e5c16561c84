"""A Valence async job names no model: it records the one its timeline shows, or NULL."""

from __future__ import annotations

from typing import Any

import pytest

from results_store import repository as repo
from results_store.models import JobStatus, Provider, ProviderJob
from results_store.records import JobIn
from tests.store.factories import RUN_ID, recording_in, start_run
from valence_client.models import VALENCE_MODELS, AsyncStatus, EmotionSegment


def _segment(labels: tuple[str, ...] | None) -> EmotionSegment:
    predictions = {label: 1 / len(labels) for label in labels} if labels else None
    return EmotionSegment(start_s=0, end_s=5, emotion="neutral", confidence=0.5, all_predictions=predictions)


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (VALENCE_MODELS["4emotions"], "4emotions"),
        (VALENCE_MODELS["7emotions"], "7emotions"),
        (None, None),  # no comprehensive output: no evidence, no model
        (("joy", "rage"), None),  # a label set we do not know
    ],
)
def test_the_model_comes_from_the_timeline(
    store: Any, labels: tuple[str, ...] | None, expected: str | None
) -> None:
    with store.session_scope() as s:
        start_run(s)
        rec = repo.upsert_recording(s, recording_in(1))
        job = repo.upsert_provider_job(
            s,
            JobIn(
                recording_id=rec.id,
                provider=Provider.VALENCE,
                model=None,
                external_id="req-1",
                status=JobStatus.SUBMITTED,
                flow_run_id=RUN_ID,
            ),
        )
        # A re-run asking for "any model" finds the job before its model is known.
        found = repo.find_resumable_job(s, rec.id, Provider.VALENCE, model=None)
        assert found is not None and found.id == job
        repo.save_emotion_segments(s, job, [_segment(labels)], flow_run_id=RUN_ID)
    with store.session_scope() as s:
        assert s.get(ProviderJob, job).model == expected
        found = repo.find_resumable_job(s, rec.id, Provider.VALENCE, model=None)
        assert found is not None and found.id == job


def test_a_reported_model_wins_over_the_label_set() -> None:
    seg = _segment(VALENCE_MODELS["4emotions"]).model_dump()
    assert AsyncStatus.model_validate({"status": "completed", "emotions": [seg]}).model == "4emotions"
    reported = {"status": "completed", "emotions": [seg], "model": "7emotions"}
    assert AsyncStatus.model_validate(reported).model == "7emotions"
    assert AsyncStatus.model_validate({"status": "processing"}).model is None
