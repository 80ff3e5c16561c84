"""Crash and resume: the nightly run's process group is SIGKILLed 10 times over one workload,
and run again after each; the final state equals an uninterrupted run's: the same rows, no
duplicates, nothing paid twice, and no process of a killed run left behind.

Five kills each land in a named phase, guaranteed: each waits for the phase's observable sign
(the night's log, the results database's job states, the run's dataset child process in
the night's process group) and is checked to have landed there. The moment between a finished
upload and storing it lasts milliseconds, so that night kills its own process group right
there. Five more kills come at seeded random moments.

Run on its own: `pytest tests/reliability/test_crash_resume.py -s` prints each kill's phase
and what the provider was paid.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from localstack.sample_data import SampleRecording, upload_samples
from localstack.seaweedfs import SeaweedFS
from tests.fixtures.emulator import LONG_RETENTION_S
from tests.pipeline.helpers import in_flight, pipeline_env, query

REPO = Path(__file__).resolve().parents[2]
RANDOM_KILLS = 5
SAMPLES: tuple[SampleRecording, ...] = (
    *(SampleRecording(f"in/clip-{i}.wav", 5 + i % 4) for i in range(6)),  # the discrete route
    *(SampleRecording(f"in/call-{i}.wav", 20 + 7 * i, samplerate=8000) for i in range(14)),
    *(SampleRecording(f"in/stereo-{i}.wav", 30 + i, channels=2) for i in range(2)),
    *(SampleRecording(f"in/meeting-{i}.flac", 25 + i, fmt="FLAC") for i in range(2)),
)
_NIGHT = """
import os, signal, sys
from flows.ingest import nightly_ingest, run_to_result
from results_store.db import upgrade
from valence_pipeline.bookkeeping import PipelineStore
from valence_pipeline.settings import get_settings
if os.environ.get("CRASH_TEST_KILL_AT"):
    # A moment too short to catch from outside: the night kills its own process group when it
    # reaches this step of the bookkeeping (before the step writes anything).
    def killed(*args, **kwargs):
        os.killpg(0, signal.SIGKILL)
    setattr(PipelineStore, os.environ["CRASH_TEST_KILL_AT"], killed)
upgrade(get_settings().database_url.get_secret_value())
run_to_result(nightly_ingest, source=sys.argv[1], trigger="manual")
"""


def start_night(
    env: dict[str, str], source: str, script: str = _NIGHT, log: Path | None = None
) -> subprocess.Popen[bytes]:
    out = subprocess.DEVNULL if log is None else log.open("wb")
    try:
        return subprocess.Popen(
            [sys.executable, "-c", script, source],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=out,
            start_new_session=True,  # its own process group: the kill takes all it started
        )
    finally:
        if log is not None:
            out.close()  # type: ignore[union-attr]


def group_commands(pgid: int) -> list[str]:
    """The command lines of the live processes of a process group."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[2]) == pgid and stat.rsplit(")", 1)[1].split()[0] != "Z":
                out.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except (OSError, IndexError, ValueError):
            continue  # it ended while we looked
    return out


def kill_when(
    proc: subprocess.Popen[bytes], sign: Callable[[], str | None], timeout: float = 300
) -> str | None:
    """SIGKILL the night's group as soon as `sign` reports something (what it saw), or when
    the night ends or `timeout` passes without it (None)."""
    deadline = time.monotonic() + timeout
    seen = None
    while seen is None and proc.poll() is None and time.monotonic() < deadline:
        seen = sign()
        if seen is None:
            time.sleep(0.02)
    kill_group(proc)
    return seen


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


def says(log: Path, text: bytes, seen: str) -> Callable[[], str | None]:
    return lambda: seen if text in log.read_bytes() else None


class Signs:
    """What can be seen of a killed night from outside: its results database, its log, its
    process group and its dataset directory."""

    def __init__(self, database_url: str, dataset: Path) -> None:
        self.db = database_url
        self.dataset = dataset

    def rows(self, statement: Any) -> list[Any]:
        import sqlalchemy.exc

        try:
            return query(self.db, statement)
        except sqlalchemy.exc.OperationalError:  # the night has not created the schema yet
            return []

    def runs(self) -> int:
        return len(self.rows("select flow_run_id from pipeline_runs"))

    def uploading(self) -> str | None:
        """A Valence upload between its initiate and its completion (its parts going up)."""
        # This night's only: an upload a kill cut off stays `uploading` (the next night sends anew).
        rows = self.rows(
            "select r.key from provider_jobs j join recordings r on r.id = j.recording_id "
            "where j.provider = 'valence' and j.status = 'uploading' and j.external_id not like 'sending:%' "
            "and j.flow_run_id = (select flow_run_id from pipeline_runs order by started_at desc limit 1)"
        )
        return f"uploading {rows[0][0]}" if rows else None

    def waiting(self) -> str | None:
        [(n,)] = self.rows(
            "select count(*) from provider_jobs where status in ('submitted', 'processing')"
        ) or [(0,)]
        return f"{n} jobs waiting at the providers" if n else None

    def parquet(self) -> set[Path]:
        return set(self.dataset.rglob("*.parquet")) if self.dataset.exists() else set()

    def exporting(self, pgid: int, before: set[Path]) -> str | None:
        """The run's dataset child is alive, results wait for their commit, and it has begun
        writing files."""
        if not any("dataset worker" in c for c in group_commands(pgid)) or not self.stored():
            return None
        new = self.parquet() - before
        return f"dataset child writing ({len(new)} new files)" if new else None

    def stored(self) -> int:
        [(n,)] = self.rows("select count(*) from recordings where status = 'stored'") or [(0,)]
        return int(n)

    def in_flight(self, this_night: bool = False) -> set[tuple[str, str]]:
        import sqlalchemy.exc

        try:
            return in_flight(self.db, this_night)
        except sqlalchemy.exc.OperationalError:  # the night has not created the schema yet
            return set()

    def phase(self, pgid: int, log: Path, runs_before: int) -> str:
        """Where a night is, judged from outside (for the random kills)."""
        if b"Beginning flow run" not in log.read_bytes():
            return "start-up (the flow has not begun)"
        if self.runs() == runs_before:
            return "discovery (the run is not opened yet)"
        if self.stored() and any("dataset worker" in c for c in group_commands(pgid)):
            return "writing the dataset"
        if seen := self.uploading():
            return f"mid-upload ({seen})"
        if self.in_flight(this_night=True):
            return "a discrete call or Valsea submit in flight"
        if seen := self.waiting():
            return f"waiting ({seen})"
        return "between steps (checks, harvest, report)"


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
    database_url = f"sqlite:///{tmp_path / 'killed' / 'results.db'}"
    signs = Signs(database_url, tmp_path / "killed" / "dataset")
    kills: list[str] = []
    in_flight: set[tuple[str, str]] = set()
    """Calls without an idempotency key that a kill caught on their way."""

    def night(log: str = "night.log", **extra: str) -> subprocess.Popen[bytes]:
        return start_night({**env, **extra}, source, log=tmp_path / "killed" / log)

    def killed(phase: str, seen: str | None) -> None:
        assert seen is not None, f"the kill meant for {phase!r} did not find it"
        caught = signs.in_flight() - in_flight
        in_flight.update(caught)
        kills.append(f"{phase}: {seen}" + (f"; {len(caught)} unkeyed call(s) in flight" if caught else ""))

    # 1. Discovery: the flow has begun (its log says so) and has not opened its run yet (the
    # listing and the store checks come first). Tried again if the first one lands late.
    for attempt in range(3):
        runs, log = signs.runs(), tmp_path / "killed" / f"discovery-{attempt}.log"
        proc = start_night(env, source, log=log)
        seen = kill_when(proc, says(log, b"Beginning flow run", "flow begun"))
        if seen and signs.runs() == runs:
            killed("discovery", f"{seen}, run not yet opened (try {attempt + 1})")
            break
    else:
        killed("discovery", None)
    # 2. Mid-upload: every part PUT takes the emulator 2 s, so an upload is caught between its
    # initiate and its completion.
    # Caught when no Valsea submit is on its way, so that kill leaves no outcome unknown.
    emu.set_faults("part_slow_s=2")
    killed(
        "mid-upload",
        kill_when(night(), lambda: None if signs.in_flight(this_night=True) else signs.uploading()),
    )
    emu.set_faults("")
    # 3. Between an upload and storing it: the provider has the audio (and billed it), the
    # database still says `uploading`; the next night must ask the provider, not upload again.
    proc = night(CRASH_TEST_KILL_AT="job_submitted")
    code = proc.wait(timeout=300)
    kill_group(proc)
    killed("between upload and storing", "completed upload, not stored" if code == -signal.SIGKILL else None)
    # 4. While jobs wait at the providers.
    killed("waiting", kill_when(night(), signs.waiting))
    # 5. While the dataset is written (its export runs in a child process of the night).
    before = signs.parquet()
    proc = night()
    killed("writing the dataset", kill_when(proc, lambda: signs.exporting(proc.pid, before)))
    # 6. Seeded random moments; where each landed is judged from outside just before it.
    rng = random.Random(20261129)
    for moment in sorted(rng.uniform(1.0, duration) for _ in range(RANDOM_KILLS)):
        runs = signs.runs()
        proc = night()
        time.sleep(moment)
        phase = signs.phase(proc.pid, tmp_path / "killed" / "night.log", runs)
        kill_group(proc)
        killed(f"random at {moment:.1f} s", phase)

    final = night("final.log")
    assert final.wait(timeout=600) == 0

    # A kill while a call without an idempotency key (a Valence discrete call, a Valsea submit)
    # was on its way leaves its outcome unknown, and that recording fails saying so rather than
    # pay twice. Exactly those, and nothing else, are unknown.
    unknown_calls = set(
        query(
            database_url,
            "select r.key, j.provider from provider_jobs j join recordings r on r.id = j.recording_id "
            "where j.status = 'unknown'",
        )
    )
    assert unknown_calls == in_flight
    unknown = {k for k, _ in unknown_calls}
    assert {
        k
        for k, _ in query(
            database_url, "select key, reason from recordings where reason like '%outcome_unknown%'"
        )
    } == unknown
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
    by_provider = Counter(provider for _, provider in unknown_calls)
    print(f"\nclean night {duration:.1f} s; {len(kills)} kills:")
    for i, kill in enumerate(kills, 1):
        print(f"  {i:2d}. {kill}")
    print(
        f"paid {dict(paid)} (clean run {dict(clean_paid)}); outcome unknown: {len(unknown_calls)} "
        f"call(s) of {len(unknown)} recording(s) {dict(by_provider)}, each one a kill caught in flight"
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
            seaweedfs,
            emu,
            database_url,
            tmp_path / "dataset",
            VALENCE_PIPELINE_PROVIDERS='["valence"]',
            VALENCE_PIPELINE_LEASE_S="2",  # the killed night's lease on the clip runs out at once
        ),
        "PREFECT_API_URL": prefect_api,
    }

    killed = start_night({**env, "CRASH_TEST_KILL_AT": "store_discrete"}, source)
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
