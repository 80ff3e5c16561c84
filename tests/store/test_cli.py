"""`valence-pipeline lineage` and `timeline`, read from the database alone."""

from __future__ import annotations

import pytest

from commands.main import main
from results_store import repository as repo
from results_store.db import Store
from results_store.models import JobStatus, Provider, RecordingStatus, RunStatus
from results_store.records import JobIn

from .factories import RUN_ID, process, recording_in, start_run
from .test_dataset_lineage import export

URI = "s3://calls/2025/01/call-0001.wav"


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def processed(store: Store, local_output_uri: str) -> dict[str, int]:
    """Recording 1 fully processed and exported; recording 2 a copy reusing it; 3 failed."""
    with store.session_scope() as s:
        start_run(s)
        ref = repo.upsert_recording(s, recording_in(1))
        done = process(s, ref, segments=3, utterances=2)
        failed = repo.upsert_provider_job(s, JobIn(ref.id, Provider.VALENCE, "4emotions", "req-failed-first"))
        repo.update_job(s, failed, status=JobStatus.FAILED, error_code="503", error_message="unavailable")
        copy = repo.upsert_recording(s, recording_in(2, sha256=recording_in(1).sha256, key="dup/copy.wav"))
        repo.record_reuse(s, recording_id=copy.id, source_recording_id=ref.id, flow_run_id=RUN_ID)
        bad = repo.upsert_recording(s, recording_in(3))
        repo.set_recording_status(s, bad.id, RecordingStatus.REJECTED, reason="audio too short (1.0 s)")
        repo.finish_run(s, RUN_ID, status=RunStatus.COMPLETED, counts={"completed": 2, "rejected": 1})
    export(store, local_output_uri, RUN_ID, [ref.id, copy.id])
    return {"recording": ref.id, "valence": done.valence_job, "valsea": done.valsea_job, "copy": copy.id}


def test_lineage_prints_version_jobs_outputs_and_run(
    store: Store, processed: dict[str, int], local_output_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(["lineage", URI, "--database-url", store.url], capsys)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == URI
    assert "version ver-1 (recording #" in out and "status completed" in out
    assert f"job #{processed['valence']} valence 4emotions external id req-{processed['recording']}-0-" in out
    assert "valsea valsea-prosody external id job-" in out
    assert "failed after 1 attempt(s)" in out and "error 503: unavailable" in out
    assert f"db emotion_segments, 3 row(s): db:emotion_segments?job_id={processed['valence']}" in out
    assert f"parquet emotion_segments, 3 row(s): {local_output_uri}/emotion_segments/processing_date=" in out
    assert "parquet recordings, 1 row(s)" in out
    assert ".parquet (delta version 1) (run " in out  # the table version holding those rows
    assert (
        f"{RUN_ID}: schedule run of nightly, completed" in out
        and "code abc1234, settings f00dfeedf00dfeed" in out
    )


def test_lineage_of_a_copy_shows_the_reuse_link(
    store: Store, processed: dict[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(["lineage", "s3://calls/dup/copy.wav", "--database-url", store.url], capsys)
    assert code == 0
    assert f"reuses results of {URI} version ver-1 (recording #{processed['recording']}, same sha256)" in out
    assert f"(of recording #{processed['recording']})" in out
    assert "db reused emotion_segments" in out


def test_timeline_prints_segments_with_prosody_beside_them(
    store: Store, processed: dict[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(["timeline", URI, "--database-url", store.url], capsys)
    assert code == 0
    with store.session_scope() as s:
        timeline = repo.timeline_for_uri(s, URI)
    assert timeline is not None
    lines = out.splitlines()
    assert lines[0].startswith(f"{URI}  version ver-1")
    assert "prosody summary [ch -]: frustration 0.10  stress 0.20  politeness 0.80" in out
    rows = [line for line in lines if "|" in line][1:]
    assert len(rows) == len(timeline.segments) == 3
    first, second = timeline.segments[0], timeline.segments[1]
    assert rows[0].startswith(
        f' -  00:00.0  00:05.0  {first.emotion:<10} {first.confidence:>5.2f}  | "utterance 0 of'
    )
    top = max(timeline.utterances[0].expressions.items(), key=lambda kv: kv[1])
    assert f"{top[0]} {top[1]:.2f}" in rows[0]
    assert rows[1].startswith(f" -  00:05.0  00:10.0  {second.emotion:<10}")
    assert '"utterance 1 of' in rows[1] or '"utterance 0 of' in rows[1]


def test_unknown_recording_and_bad_uri_fail_clearly(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["timeline", "s3://calls/missing.wav", "--database-url", store.url], capsys)
    assert (code, out) == (1, "") and "no recording s3://calls/missing.wav" in err
    code, _, err = run_cli(["lineage", "https://example.com/x.wav", "--database-url", store.url], capsys)
    assert code == 2 and "expected s3://bucket/key" in err


def test_queries_refuse_a_database_that_is_behind(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["lineage", URI, "--database-url", db_url], capsys)
    assert code == 2 and "run `valence-pipeline db upgrade`" in err


def test_queries_default_to_the_settings_database(
    store: Store,
    processed: dict[str, int],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from valence_pipeline.settings import get_settings

    monkeypatch.setenv("VALENCE_PIPELINE_DATABASE_URL", store.url)
    get_settings.cache_clear()
    try:
        code, out, _ = run_cli(["timeline", URI], capsys)
    finally:
        get_settings.cache_clear()
    assert code == 0 and out.startswith(URI)


def test_dataset_show_reads_the_newest_version_or_an_earlier_one(
    processed: dict[str, int], local_output_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from results_store import dataset

    from .factories import segment_records

    with dataset.DatasetWriter(local_output_uri, "run-later") as writer:
        writer.add_emotion_segments(segment_records(99, 990, 2))
    args = ["dataset", "show", "emotion_segments", "--output-uri", local_output_uri]
    args += ["--columns", "recording_id,segment_index,run_id"]
    code, out, _ = run_cli(args, capsys)
    lines = out.splitlines()
    assert code == 0 and lines[:2] == [
        "# emotion_segments version 2: 8 row(s)",
        "recording_id\tsegment_index\trun_id",
    ]
    assert sorted(lines[2:])[-1] == "99\t1\trun-later"
    code, out, _ = run_cli([*args, "--as-of-version", "1"], capsys)
    lines = out.splitlines()
    assert code == 0 and lines[0] == "# emotion_segments version 1: 6 row(s)"
    assert {line.split("\t")[2] for line in lines[2:]} == {RUN_ID}
    code, out, _ = run_cli(
        ["dataset", "history", "emotion_segments", "--output-uri", local_output_uri], capsys
    )
    assert code == 0 and [line.split("\t")[2] for line in out.splitlines()] == [
        "WRITE",
        "WRITE",
        "CREATE TABLE",
    ]
    assert out.splitlines()[0].endswith("run run-later")
    code, _, err = run_cli([*args[:2], "nonsense", "--output-uri", local_output_uri], capsys)
    assert code == 2 and "unknown table 'nonsense'" in err
