"""Crash and resume: the nightly run's process group is SIGKILLed at 10 seeded random moments
(discovery, mid-upload, between upload and storing, while waiting, while writing the dataset)
and run again after each; the final state equals an uninterrupted run's: the same rows, no
duplicates, nothing paid twice, and no process of a killed run left behind.

Run on its own: `pytest tests/reliability/test_crash_resume.py -s` prints the kill moments and
what the provider was paid.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localstack.sample_data import SampleRecording, upload_samples
from localstack.seaweedfs import SeaweedFS
from tests.fixtures.emulator import LONG_RETENTION_S
from tests.pipeline.helpers import pipeline_env, query

REPO = Path(__file__).resolve().parents[2]
KILLS = 10
SAMPLES: tuple[SampleRecording, ...] = (
    *(SampleRecording(f"in/clip-{i}.wav", 5 + i % 4) for i in range(6)),  # the discrete route
    *(SampleRecording(f"in/call-{i}.wav", 20 + 7 * i, samplerate=8000) for i in range(14)),
    *(SampleRecording(f"in/stereo-{i}.wav", 30 + i, channels=2) for i in range(2)),
    *(SampleRecording(f"in/meeting-{i}.flac", 25 + i, fmt="FLAC") for i in range(2)),
)
_NIGHT = """
import sys
from flows.ingest import nightly_ingest, run_to_result
from results_store.db import upgrade
from valence_pipeline.settings import get_settings
upgrade(get_settings().database_url.get_secret_value())
run_to_result(nightly_ingest, source=sys.argv[1], trigger="manual")
"""


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[str]:
    """One Prefect API server for every child run (started once: the children start fast)."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield str(PREFECT_API_URL.value())


def start_night(env: dict[str, str], source: str, script: str = _NIGHT) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", script, source],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the kill takes all it started
    )


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError("a process of the killed run is still alive")


def snapshot(database_url: str) -> dict[str, Any]:
    """What a run leaves, by object key (ids differ between databases)."""
    recordings = dict(query(database_url, "select key, status from recordings"))
    segments = Counter(
        dict(
            query(
                database_url,
                "select r.key, count(*) from emotion_segments s join provider_jobs j on j.id = s.job_id "
                "join recordings r on r.id = j.recording_id group by r.key",
            )
        )
    )
    prosody = dict(
        query(
            database_url,
            "select r.key, p.frustration from prosody_results p join provider_jobs j on j.id = p.job_id "
            "join recordings r on r.id = j.recording_id",
        )
    )
    emotions = sorted(
        query(
            database_url,
            "select r.key, s.segment_index, s.emotion from emotion_segments s "
            "join provider_jobs j on j.id = s.job_id join recordings r on r.id = j.recording_id",
        )
    )
    return {"recordings": recordings, "segments": segments, "prosody": prosody, "emotions": emotions}


def test_killed_ten_times_the_night_ends_as_if_never_killed_and_pays_once(
    prefect_api: str,
    seaweedfs: SeaweedFS,
    s3_client: Any,
    bucket: str,
    make_emulator: Any,
    tmp_path: Path,
) -> None:
    upload_samples(s3_client, bucket, SAMPLES)
    source = f"s3://{bucket}/in/"

    def env_for(name: str, emu: Any) -> dict[str, str]:
        env = pipeline_env(
            seaweedfs, emu, f"sqlite:///{tmp_path / name / 'results.db'}", tmp_path / name / "dataset",
            # The provider takes a moment (emulated minutes at 60x): kills land while jobs wait.
            VALENCE_PIPELINE_VALENCE_PICKUP_DELAY_S="0.2", VALENCE_PIPELINE_VALSEA_PICKUP_DELAY_S="0.1",
            VALENCE_PIPELINE_LEASE_S="2",
        )  # fmt: skip
        (tmp_path / name).mkdir(exist_ok=True)
        return {**os.environ, **env, "PREFECT_API_URL": prefect_api}

    # The uninterrupted night, for the rows to compare with and its duration.
    clean_emu = make_emulator(time_scale=60.0, retention_s=LONG_RETENTION_S)
    started = time.monotonic()
    clean = start_night(env_for("clean", clean_emu), source)
    assert clean.wait(timeout=600) == 0
    duration = time.monotonic() - started
    expected = snapshot(f"sqlite:///{tmp_path / 'clean' / 'results.db'}")
    assert set(expected["recordings"].values()) == {"completed"}

    emu = make_emulator(time_scale=60.0, retention_s=LONG_RETENTION_S)
    env = env_for("killed", emu)
    rng = random.Random(20261129)
    moments = sorted(rng.uniform(1.0, duration) for _ in range(KILLS))
    for moment in moments:
        proc = start_night(env, source)
        time.sleep(moment)
        kill_group(proc)
    final = start_night(env, source)
    assert final.wait(timeout=600) == 0

    database_url = f"sqlite:///{tmp_path / 'killed' / 'results.db'}"
    # A kill while a Valsea submit was on its way leaves its outcome unknown (no idempotency
    # key: it may have arrived), and that recording fails saying so rather than pay twice.
    unknown = {
        k
        for k, _ in query(
            database_url, "select key, reason from recordings where reason like '%outcome_unknown%'"
        )
    }
    got = snapshot(database_url)
    for part in ("recordings", "segments", "prosody"):
        assert {k: v for k, v in got[part].items() if k not in unknown} == {
            k: v for k, v in expected[part].items() if k not in unknown
        }, part
    assert [e for e in got["emotions"] if e[0] not in unknown] == [
        e for e in expected["emotions"] if e[0] not in unknown
    ]
    assert all(got["recordings"][k] == "failed" for k in unknown)
    # No duplicate rows, no job twice for one call.
    [(jobs, calls)] = query(
        database_url,
        "select count(*), count(distinct recording_id || provider || coalesce(channel, -1)) "
        "from provider_jobs where status = 'completed'",
    )
    assert jobs == calls
    # The dataset holds each stored row once, and nothing half-written is visible.
    from results_store.dataset import read_table

    dataset = str(tmp_path / "killed" / "dataset")
    assert read_table(dataset, "emotion_segments").num_rows == len(got["emotions"])
    # Paid once per content and provider call, however often the night was killed.
    ledger = emu.ledger()
    for sha, counts in ledger["by_sha256"].items():
        assert all(n == 1 for kind, n in counts.items() if kind != "total"), (sha, counts)
    paid, clean_paid = (Counter(e["kind"] for e in emu_.ledger()["entries"]) for emu_ in (emu, clean_emu))
    assert all(paid[kind] <= n for kind, n in clean_paid.items()), (paid, clean_paid)
    print(
        f"\nclean night {duration:.1f} s; killed at {', '.join(f'{m:.1f}' for m in moments)} s; "
        f"paid {dict(paid)} (clean run {dict(clean_paid)}); outcome unknown: {len(unknown)}"
    )


# The night, its process killed the moment a discrete answer has arrived (and was billed),
# before anything of it is stored.
_KILLED_AFTER_A_DISCRETE_ANSWER = (
    """
import os, signal
from valence_pipeline.bookkeeping import PipelineStore
def killed(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
PipelineStore.store_discrete = killed
"""
    + _NIGHT
)
_RETRY_FAILED = """
from flows.ingest import retry_failed, run_to_result
run_to_result(retry_failed)
"""


def test_killed_between_a_discrete_answer_and_its_storing_the_next_run_does_not_pay_again(
    prefect_api: str,
    seaweedfs: SeaweedFS,
    s3_client: Any,
    bucket: str,
    make_emulator: Any,
    tmp_path: Path,
) -> None:
    """The discrete call has no idempotency key: a process that dies after its answer and
    before storing it leaves the outcome unknown (its intent was stored first). The next
    night does not call again; the recording fails saying so; an operator's retry resends."""
    upload_samples(s3_client, bucket, (SampleRecording("in/clip.wav", 6),))  # the discrete route
    source = f"s3://{bucket}/in/"
    emu = make_emulator(time_scale=3600.0, retention_s=LONG_RETENTION_S)
    database_url = f"sqlite:///{tmp_path / 'results.db'}"
    env = {
        **os.environ,
        # Valence alone: Valsea's submit (which has the same guard) is not in flight at the kill.
        **pipeline_env(
            seaweedfs, emu, database_url, tmp_path / "dataset", VALENCE_PIPELINE_PROVIDERS='["valence"]'
        ),
        "PREFECT_API_URL": prefect_api,
    }

    killed = start_night(env, source, _KILLED_AFTER_A_DISCRETE_ANSWER)
    try:
        assert killed.wait(timeout=300) == -signal.SIGKILL
    finally:
        kill_group(killed)
    assert Counter(e["kind"] for e in emu.ledger()["entries"])["valence_discrete"] == 1

    again = start_night(env, source)
    assert again.wait(timeout=300) == 0
    assert [n["valence_discrete"] for n in emu.ledger()["by_sha256"].values()] == [1]
    [(status, reason)] = query(database_url, "select status, reason from recordings")
    assert status == "failed" and "valence: outcome_unknown" in (reason or ""), (status, reason)

    operator = start_night(env, source, _RETRY_FAILED)
    assert operator.wait(timeout=300) == 0
    [(status,)] = query(database_url, "select status from recordings")
    assert status == "completed"
    # The operator's resend is the one deliberate second payment.
    assert Counter(e["kind"] for e in emu.ledger()["entries"])["valence_discrete"] == 2
    [(segments,)] = query(database_url, "select count(*) from emotion_segments")
    assert segments == 1
