"""Pipeline throughput against its lower bound, and memory against the size of the night.

    .venv/bin/python bench/bench_pipeline_throughput.py              # everything (~20 min)
    .venv/bin/python bench/bench_pipeline_throughput.py --skip-sdk   # without the SDK peer
    .venv/bin/python bench/bench_pipeline_throughput.py --only limited

One run starts SeaweedFS, a Prefect API server and, per scenario, a fresh emulator, and runs
the nightly flow in a fresh child process (its own peak RSS; the flow's wall time is taken
inside the child, so the Prefect server's start-up is not counted):

- limited: 60 recordings (2.75 h of audio, 30 s to 5 min, 8 kHz), emulator at --time-scale 60,
  each provider at its example limits (10 requests/s, 100/min per key). The pipeline's
  expected-finish settings (pickup delay, seconds per audio hour) are divided by the time
  scale, as a user of a faster provider would set them. The flow starts on a minute boundary
  of the provider's windows (the child waits for one after its imports), so the bound does not
  depend on the moment. The lower bound: per provider, the counted calls the workload needs at
  least (3 per file: Valence initiate, complete, one status; Valsea submit, one status, the
  result), each made at the earliest moment every window of its limits allows, as the emulator
  counts them (fixed windows aligned to the Unix epoch: 100 calls in the first 10 s, the other
  80 from the next minute on), the two providers in parallel, plus the longest provider
  processing time at that time scale. Also printed: the plain rate bound (calls / per-minute
  limit), the yardstick the issue used (108 s), and where the wall time went (before the first
  provider call, the calls, after the last).
- instant: the same 60 recordings, an emulator that answers at once, limits raised to 1,000/s.
- nights: peak RSS of a 100-recording and a 2,000-recording night (short clips, instant
  emulator): memory must not grow with the night. Printed for the flow process and for its
  largest child (the run's dataset child, which writes the dataset and draws the pictures).
- workers: the same nights deployed (`prefect deploy --all` on a `prefect server start` backed
  by PostgreSQL, `localstack/prefect_server.py`; results in a fresh PostgreSQL database) and
  run by one process worker, the night handed to the pool in `process-batch` runs: the peak
  RSS of every flow-run process the worker starts (the night's, each batch's) and of their
  children.
- sdk: the seed's batch example (public `valenceai` SDK: upload all, then `emotions()` each,
  Valence only) on the limited workload: as written, and wrapped in a sleep-and-retry on 429.

Also printed per scenario: status calls per job and the emulator's answers of 429.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from localstack.prefect_server import PrefectServer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a plain script from anywhere

WINDOWS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}
EXAMPLE_LIMITS = (10, 100, 1000, 10000)
RAISED_LIMITS = (1000, 60000, 1000000, 10000000)
TIME_SCALE = 60.0
INSTANT = 1_000_000.0
CALLS_PER_FILE = 3
RETENTION_REAL_S = 4 * 3600.0
"""Real seconds a result is kept (as emulated seconds: this times the time scale). At a
million-fold clock the documented day would be 86 ms, and a night of 2,000 would find its
results gone before it fetched them."""
STATUS_PATHS = ("/v1/asynch/emotion/status/", "/v1/prosody/")


@dataclass
class Run:
    name: str
    seconds: float
    peak_mib: float
    result: dict[str, Any]
    answers: Counter[int]
    status_calls: int
    jobs: int
    timeline: dict[str, tuple[float, float]]
    """Per provider: its first and last counted call, in seconds after the flow started."""
    started_at: float
    children_peak_mib: float

    @property
    def status_per_job(self) -> float:
        return self.status_calls / max(1, self.jobs)


def workload(n: int = 60, first_s: float = 30.0, last_s: float = 300.0) -> list[tuple[str, float]]:
    """n recordings, durations spread evenly from first_s to last_s (60: 2.75 h in all)."""
    step = (last_s - first_s) / max(1, n - 1)
    return [(f"night/rec-{i:04d}.wav", first_s + i * step) for i in range(n)]


def earliest_schedule(calls: int, limits: tuple[int, ...], start: float) -> float:
    """When the last of `calls` calls could go at the earliest, from `start` (Unix time), under
    every window of `limits` as the emulator counts them: fixed windows aligned to the Unix
    epoch (emulator/ratelimit.py). Each call goes at the first moment no window is full;
    taking every call as early as possible is optimal for counting windows."""
    lengths = list(WINDOWS.values())
    current = [-1] * len(lengths)  # window index per length
    used = [0] * len(lengths)
    t = start
    for _ in range(calls):
        while True:
            blocked = False
            for i, (length, limit) in enumerate(zip(lengths, limits, strict=True)):
                index = int(t // length)
                if index == current[i] and used[i] >= limit:
                    t = (index + 1) * length  # wait for this window to start over
                    blocked = True
            if not blocked:
                break
        for i, length in enumerate(lengths):
            index = int(t // length)
            used[i] = used[i] + 1 if index == current[i] else 1
            current[i] = index
    return t - start


def lower_bound(
    files: int, limits: tuple[int, ...], longest_processing_s: float, start: float
) -> tuple[float, float]:
    """(window bound, rate bound) in seconds for `files` recordings per provider, the flow
    having started at `start`: the earliest its counted calls could all be made (the two
    providers in parallel, so one provider's), plus the longest processing time."""
    calls = files * CALLS_PER_FILE
    rate = calls / limits[1] * 60.0
    return earliest_schedule(calls, limits, start) + longest_processing_s, rate


def longest_processing(durations: list[float], time_scale: float) -> float:
    """The emulator's documented processing time of the longest file, at its clock speed."""
    longest_h = max(durations) / 3600.0
    valence = 10.0 + 90.0 * longest_h
    valsea = 5.0 + 60.0 * longest_h
    return max(valence, valsea) / time_scale


# --------------------------------------------------------------------------- children


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _native_mib() -> str:
    """SQLite's own allocations and glibc's heap (in use / free inside it), for the trace."""
    import ctypes
    import ctypes.util

    class Mallinfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                    "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]  # fmt: skip

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = Mallinfo2
    info = libc.mallinfo2()
    sqlite = ctypes.CDLL(ctypes.util.find_library("sqlite3") or "libsqlite3.so.0")
    sqlite.sqlite3_memory_used.restype = ctypes.c_int64
    return (
        f"sqlite {sqlite.sqlite3_memory_used() / 2**20:.1f} MiB, malloc in use "
        f"{(info.uordblks + info.hblkhd) / 2**20:.1f} free {info.fordblks / 2**20:.1f} MiB, "
        f"python blocks {sys.getallocatedblocks()}, {_mappings()}"
    )


def _mappings() -> str:
    """Resident MiB by kind of mapping: glibc's main heap, anonymous memory (Python's arenas,
    thread heaps and stacks, large blocks), files (libraries)."""
    rss = {"heap": 0, "anon": 0, "file": 0}
    kind = "anon"
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(maxsplit=6)
            if len(head) >= 5 and "-" in head[0] and not head[0].endswith(":"):
                name = head[5].strip() if len(head) > 5 else ""
                kind = "heap" if name == "[heap]" else "file" if name.startswith("/") else "anon"
            elif head and head[0] == "Rss:":
                rss[kind] += int(head[1])
    return ", ".join(f"{k} {v / 1024:.1f}" for k, v in rss.items())


def _sample_rss(to: str) -> Any:
    """`BENCH_RSS_TRACE=FILE`: a line every second: RSS, SQLite's memory, glibc's heap."""
    import threading

    stop = threading.Event()
    t0 = time.monotonic()

    def loop() -> None:
        with open(to, "a") as out:
            while not stop.wait(1.0):
                out.write(f"+{time.monotonic() - t0:6.1f} s RSS {_rss_mib():.0f} MiB, {_native_mib()}\n")
                out.flush()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return stop.set


def _trace_memory(to: str | None) -> Any:
    """`BENCH_TRACEMALLOC=FILE`: where the flow process's Python heap grows. Every
    `BENCH_TRACEMALLOC_S` seconds (default 20) appends to FILE the RSS, the traced total and
    the 15 call sites (5 frames) that grew most since the flow started. Returns the stop."""
    if not to:
        return None
    import threading
    import tracemalloc

    tracemalloc.start(5)
    base = tracemalloc.take_snapshot()
    every = float(os.environ.get("BENCH_TRACEMALLOC_S", "20"))
    stop = threading.Event()
    t0 = time.monotonic()

    def sample(label: str) -> None:
        snap = tracemalloc.take_snapshot()
        now, peak = tracemalloc.get_traced_memory()
        with open(to, "a") as out:
            out.write(
                f"\n=== {label} +{time.monotonic() - t0:.0f} s: RSS {_rss_mib():.0f} MiB, "
                f"traced {now / 2**20:.1f} MiB (peak {peak / 2**20:.1f})\n"
            )
            for stat in snap.compare_to(base, "traceback")[:15]:
                out.write(f"{stat.size_diff / 2**20:+8.2f} MiB {stat.count_diff:+8d} blocks\n")
                for line in stat.traceback.format()[-10:]:
                    out.write(f"      {line}\n")

    def loop() -> None:
        while not stop.wait(every):
            sample("during")

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()

    def finish() -> None:
        stop.set()
        thread.join()
        sample("end")

    return finish


def _count_statements(to: str | None) -> Any:
    """`BENCH_SQL=FILE`: the SQL statements the flow process ran, with counts, and how many
    distinct ones each database connection ran (against the driver's per-connection cache of
    prepared statements, `results_store.db.SQLITE_CACHED_STATEMENTS`). Returns the writer."""
    if not to:
        return None
    import sqlalchemy as sa

    seen: Counter[str] = Counter()
    per_connection: dict[int, set[str]] = {}

    @sa.event.listens_for(sa.engine.Engine, "before_cursor_execute")
    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen[statement] += 1
        per_connection.setdefault(id(conn.connection.dbapi_connection), set()).add(statement)

    def write() -> None:
        with open(to, "w") as out:
            sizes = sorted(len(v) for v in per_connection.values())
            out.write(f"distinct statements {len(seen)}; per connection {sizes}\n")
            for statement, n in seen.most_common():
                out.write(f"{n:8d} {statement[:300]!r}\n")

    return write


def child(source: str) -> None:
    from flows.ingest import nightly_ingest, run_to_result
    from results_store.db import upgrade
    from valence_pipeline.settings import get_settings

    upgrade(get_settings().database_url.get_secret_value())
    align = float(os.environ.get("BENCH_ALIGN_START_S", "0"))
    if align:  # start on a window boundary, so the bound does not depend on the moment
        time.sleep(align - time.time() % align)
    profile_to = os.environ.get("BENCH_PROFILE")
    profiler = None
    if profile_to:  # where the flow process's main thread spends its time (pyinstrument)
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.005)
        profiler.start()
    watcher = _trace_memory(os.environ.get("BENCH_TRACEMALLOC"))
    if os.environ.get("BENCH_RSS_TRACE"):
        watcher = _sample_rss(os.environ["BENCH_RSS_TRACE"])
    count_sql = _count_statements(os.environ.get("BENCH_SQL"))
    started, started_at = time.monotonic(), time.time()
    result = run_to_result(nightly_ingest, source=source, trigger="manual")
    if count_sql is not None:
        count_sql()
    if watcher is not None:
        watcher()
    seconds = time.monotonic() - started
    if profiler is not None:
        profiler.stop()
        Path(str(profile_to)).write_text(profiler.output_text(show_all=False))
    result.pop("summary", None)
    report = {
        "seconds": seconds,
        "started_at": started_at,
        "peak_mib": _peak_mib(),
        # The largest of the flow's own children (the run's dataset child), each its own process.
        "children_peak_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "result": result,
    }
    print(json.dumps(report))


def child_sdk(keys_file: str, retry: str) -> None:
    """The seed's batch example, against the emulator (Valence only)."""
    import boto3
    from valenceai import ValenceClient

    keys = json.loads(Path(keys_file).read_text())
    client = ValenceClient(
        api_key=os.environ["VALENCE_API_KEY"],
        base_url=os.environ["VALENCE_API_BASE_URL"],
        show_progress=False,
    )
    s3 = boto3.client("s3")
    started = time.monotonic()

    def patient(call: Any, *args: Any, **kwargs: Any) -> Any:
        while True:
            try:
                return call(*args, **kwargs)
            except Exception as exc:
                limited = "429" in str(exc) or "rate" in str(exc).lower()
                if retry == "retry" and limited:
                    time.sleep(1.0)
                    continue
                raise

    uploads: dict[str, str] = {}
    outcome = "completed"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for bucket_key in keys:
                bucket, key = bucket_key.split("/", 1)
                path = Path(tmp) / Path(key).name
                s3.download_file(bucket, key, str(path))
                uploads[key] = patient(client.asynch.upload, str(path))
                path.unlink()
        for request_id in uploads.values():
            patient(client.asynch.emotions, request_id, max_attempts=50, interval_seconds=10 / TIME_SCALE * 6)
    except Exception as exc:  # noqa: BLE001 - the point: what happens as written
        outcome = f"stopped: {type(exc).__name__} after {len(uploads)} uploads"
    print(json.dumps({"seconds": time.monotonic() - started, "peak_mib": _peak_mib(), "outcome": outcome}))


# --------------------------------------------------------------------------- parent


@contextmanager
def prefect_api() -> Iterator[str]:
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield str(PREFECT_API_URL.value())


def upload(sw: Any, bucket: str, files: list[tuple[str, float]]) -> None:
    import boto3

    from localstack.sample_data import SampleRecording, upload_samples

    s3 = boto3.client("s3", **sw.boto3_kwargs())
    upload_samples(s3, bucket, tuple(SampleRecording(k, d, samplerate=8000) for k, d in files))


def env_for(
    workdir: Path, sw: Any, emu: Any, api_url: str, limits: tuple[int, ...], time_scale: float
) -> dict[str, str]:
    from valence_pipeline.processes import with_malloc_tunables

    text = json.dumps(dict(zip(WINDOWS, limits, strict=True)))
    # The flow process starts as the product starts one (the CLI, a worker's flow run).
    return {
        **with_malloc_tunables(os.environ),
        **sw.env(),
        "PREFECT_API_URL": api_url,
        "VALENCE_API_KEY": emu.valence_key,
        "VALENCE_API_BASE_URL": emu.base_url,
        "VALSEA_API_KEY": emu.valsea_key,
        "VALSEA_API_BASE_URL": emu.base_url,
        "VALENCE_PIPELINE_DATABASE_URL": f"sqlite:///{workdir / 'results.db'}",
        "VALENCE_PIPELINE_OUTPUT_URI": str(workdir / "dataset"),
        "VALENCE_PIPELINE_VALENCE_RATE_LIMITS": text,
        "VALENCE_PIPELINE_VALSEA_RATE_LIMITS": text,
        # A user of a provider this much faster sets its expected finish accordingly.
        "VALENCE_PIPELINE_VALENCE_PICKUP_DELAY_S": str(10.0 / time_scale),
        "VALENCE_PIPELINE_VALENCE_S_PER_AUDIO_HOUR": str(90.0 / time_scale),
        "VALENCE_PIPELINE_VALSEA_PICKUP_DELAY_S": str(5.0 / time_scale),
        "VALENCE_PIPELINE_VALSEA_S_PER_AUDIO_HOUR": str(60.0 / time_scale),
        "VALENCE_PIPELINE_POLL_MIN_INTERVAL_S": str(max(0.05, 5.0 / time_scale)),
        "VALENCE_PIPELINE_POLL_MAX_INTERVAL_S": str(max(0.2, 60.0 / time_scale)),
    }


def run_child(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(
        ["/bin/sh", "-c", '"$0" "$@"; exit $?', sys.executable, __file__, *args],
        env=env, capture_output=True, text=True, timeout=3600, check=False,
    )  # fmt: skip
    if os.environ.get("BENCH_CHILD_LOG"):  # the flow's own log, to see where its time went
        Path(os.environ["BENCH_CHILD_LOG"]).write_text(done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{done.stderr[-4000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def scenario(
    name: str,
    root: Path,
    sw: Any,
    api_url: str,
    files: list[tuple[str, float]],
    limits: tuple[int, ...],
    time_scale: float,
    align_start_s: float = 0.0,
) -> Run:
    from emulator.process import EmulatorProcess

    workdir = root / name
    workdir.mkdir()
    bucket = f"bench-{name}"
    upload(sw, bucket, files)
    with EmulatorProcess(
        time_scale=time_scale,
        retention_s=RETENTION_REAL_S * time_scale,
        valence_limits=limits,
        valsea_limits=limits,
        data_dir=workdir / "emulator",
    ) as emu:
        env = env_for(workdir, sw, emu, api_url, limits, time_scale)
        report = run_child(["--child", f"s3://{bucket}/"], {**env, "BENCH_ALIGN_START_S": str(align_start_s)})
        log = emu.requests_log()
        kinds = Counter(e["kind"] for e in emu.ledger()["entries"])
    answers = Counter(int(e["status"]) for e in log)
    status_calls = sum(
        1 for e in log
        if e["method"] == "GET" and e["path"].startswith(STATUS_PATHS) and not e["path"].endswith("/result")
    )  # fmt: skip
    timeline: dict[str, tuple[float, float]] = {}
    for provider in ("valence", "valsea"):
        times = [e["at"] - report["started_at"] for e in log if e.get("provider") == provider]
        if times:
            timeline[provider] = (min(times), max(times))
    return Run(
        name,
        report["seconds"],
        report["peak_mib"],
        report["result"],
        answers,
        status_calls,
        sum(kinds.values()),
        timeline,
        report["started_at"],
        report["children_peak_mib"],
    )


def print_timeline(run: Run) -> None:
    """Where the wall time went: before the first provider call, the calls, after the last."""
    if not run.timeline:
        return
    first = min(a for a, _ in run.timeline.values())
    last = max(b for _, b in run.timeline.values())
    spans = ", ".join(f"{p} +{a:.1f}..+{b:.1f} s" for p, (a, b) in sorted(run.timeline.items()))
    print(
        f"  time: {first:.1f} s before the first provider call; calls {spans}; "
        f"{run.seconds - last:.1f} s after the last (dataset, report)"
    )


def sdk_scenario(root: Path, sw: Any, files: list[tuple[str, float]], retry: str) -> dict[str, Any]:
    from emulator.process import EmulatorProcess

    workdir = root / f"sdk-{retry}"
    workdir.mkdir()
    bucket = f"bench-sdk-{retry}"
    upload(sw, bucket, files)
    keys = workdir / "keys.json"
    keys.write_text(json.dumps([f"{bucket}/{k}" for k, _ in files]))
    with EmulatorProcess(
        time_scale=TIME_SCALE,
        valence_limits=EXAMPLE_LIMITS,
        valsea_limits=EXAMPLE_LIMITS,
        data_dir=workdir / "emu",
    ) as emu:
        env = {
            **os.environ,
            **sw.env(),
            "VALENCE_API_KEY": emu.valence_key,
            "VALENCE_API_BASE_URL": emu.base_url,
        }
        return run_child(["--child-sdk", str(keys), retry], env)


POSTGRES_URL = os.environ.get(
    "VALENCE_PIPELINE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
POOL = "valence-pipeline"


def deploy(server: PrefectServer) -> None:
    """The pool and `prefect deploy --all`, as the README's deploy steps go (the deployments'
    `{{ $VAR }}` placeholders are filled from the worker's environment, not this one)."""
    from localstack.prefect_server import PREFECT

    env = {**os.environ, "PREFECT_API_URL": server.api_url}
    for args in (["work-pool", "create", POOL, "--type", "process"], ["--no-prompt", "deploy", "--all"]):
        done = subprocess.run(
            [PREFECT, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False
        )
        if done.returncode != 0 and "already exists" not in done.stdout + done.stderr:
            raise SystemExit(f"prefect {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")


@dataclass
class WorkerNight:
    seconds: float
    state: str
    night_mib: float
    batch_mib: list[float]
    helper_mib: float


def worker_night(n: int, root: Path, sw: Any, server: PrefectServer) -> WorkerNight:
    """A night of `n` recordings on a process worker, the night handed to the pool in batches
    (`process-batch` runs, as the `nightly` deployment of prefect.yaml does): the peak RSS of
    every flow-run process the worker starts (its VmHWM, read every 0.2 s while it lives)."""
    import requests

    from emulator.process import EmulatorProcess
    from localstack.prefect_server import PREFECT, fresh_postgres_database
    from localstack.processes import descendants, environ_value, high_water_mib, kill_all
    from results_store.db import upgrade

    name = f"workers-{n}"
    workdir = root / name
    workdir.mkdir()
    bucket = f"bench-{name}"
    upload(sw, bucket, [(f"w{n}/clip-{i:05d}.wav", 12.0 + i % 7) for i in range(n)])
    with (
        fresh_postgres_database(POSTGRES_URL, f"bench_{name.replace('-', '_')}") as database_url,
        EmulatorProcess(
            time_scale=INSTANT,
            retention_s=RETENTION_REAL_S * INSTANT,
            valence_limits=RAISED_LIMITS,
            valsea_limits=RAISED_LIMITS,
            data_dir=workdir / "emulator",
        ) as emu,
    ):
        upgrade(database_url)
        env = {
            **env_for(workdir, sw, emu, server.api_url, RAISED_LIMITS, INSTANT),
            "VALENCE_PIPELINE_DATABASE_URL": database_url,
            "VALENCE_PIPELINE_REPOSITORY": f"file://{REPO}",  # the pull step clones what is committed
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_WORKER_PREFETCH_SECONDS": "1",
            # Prefect's per-run workspaces: in the bench's folder, removed with it.
            "TMPDIR": str(workdir),
        }
        nightly = server.api("GET", "/deployments/name/nightly-ingest/nightly")
        body = {"parameters": {"source": [f"s3://{bucket}/"], "trigger": "manual"}}
        worker = subprocess.Popen(
            [PREFECT, "worker", "start", "--pool", POOL, "--name", name, "--limit", "4"],
            env=env, stdout=(workdir / "worker.log").open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        peaks: dict[int, tuple[float, int, str | None]] = {}
        started = time.monotonic()
        try:
            run_id = server.api("POST", f"/deployments/{nightly['id']}/create_flow_run", body)["id"]
            state = ""
            while time.monotonic() - started < 3600:
                for pid, (depth, _) in descendants(worker.pid).items():
                    mib = high_water_mib(pid)
                    if mib is not None:
                        known = peaks.get(pid)
                        run = known[2] if known else environ_value(pid, "PREFECT__FLOW_RUN_ID")
                        peaks[pid] = (max(mib, known[0] if known else 0.0), depth, run)
                try:
                    state = server.api("GET", f"/flow_runs/{run_id}")["state"]["type"]
                except requests.RequestException as exc:
                    # A loaded 2-core machine can stall the server past the read timeout: ask
                    # again, the night goes on regardless.
                    print(f"  (the server did not answer a state poll: {type(exc).__name__}; asking again)")
                    continue
                if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                    break
                time.sleep(0.2)
            seconds = time.monotonic() - started
        finally:
            kill_all([worker.pid, *descendants(worker.pid)])
            worker.wait()
    # Flow-run processes are the worker's children; deeper ones are their helpers (the
    # dataset writer's child).
    runs = {pid: (mib, run) for pid, (mib, depth, run) in peaks.items() if depth == 1 and run}
    night = [mib for mib, run in runs.values() if run == run_id]
    batches = [mib for mib, run in runs.values() if run != run_id]
    helpers = [mib for mib, depth, _ in peaks.values() if depth > 1]
    return WorkerNight(seconds, state, max(night, default=0.0), batches, max(helpers, default=0.0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--only", choices=("limited", "instant", "nights", "workers", "sdk"), action="append")
    parser.add_argument("--skip-sdk", action="store_true")
    parser.add_argument("--nights", default="100,2000", help="night sizes for the memory comparison")
    parser.add_argument(
        "--profile", metavar="FILE", help="write a pyinstrument profile of the (last) flow process to FILE"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-sdk", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child)
        return 0
    if args.child_sdk:
        child_sdk(*args.child_sdk)
        return 0
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if args.profile:
        os.environ["BENCH_PROFILE"] = str(Path(args.profile).resolve())
    wanted = set(args.only or ["limited", "instant", "nights", "workers", "sdk"]) - (
        {"sdk"} if args.skip_sdk else set()
    )
    files = workload()
    durations = [d for _, d in files]
    print(f"workload: {len(files)} recordings, {sum(durations) / 3600:.2f} h of audio, 8 kHz; 2 cores")
    from localstack.seaweedfs import SeaweedFS

    with (
        tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp,
        SeaweedFS(Path(tmp) / "sw") as sw,
        prefect_api() as api,
    ):
        root = Path(tmp)
        if "limited" in wanted:
            run = scenario("limited", root, sw, api, files, EXAMPLE_LIMITS, TIME_SCALE, align_start_s=60.0)
            longest = longest_processing(durations, TIME_SCALE)
            window, rate = lower_bound(len(files), EXAMPLE_LIMITS, longest, run.started_at)
            print(f"\n[limited] limits {EXAMPLE_LIMITS} per provider, emulator time scale {TIME_SCALE:g}")
            print(f"  the flow started {run.started_at % 60:.2f} s into a minute of the provider's windows")
            print(f"  lower bound (every window, providers in parallel, + processing) {window:7.1f} s")
            print(f"  rate bound (calls / per-minute limit: the issue's 108 s)        {rate:7.1f} s")
            print(f"  pipeline wall time                                             {run.seconds:7.1f} s")
            print(
                f"  ratio to the lower bound {run.seconds / window:.2f}x (target <= 1.15x); to the rate bound {run.seconds / rate:.2f}x"
            )
            print(
                f"  status calls per job {run.status_per_job:.2f} (target <= 1.5); answers of 429: {run.answers[429]} (target 0)"
            )
            print_timeline(run)
            print(
                f"  completed {run.result.get('completed')} failed {run.result.get('failed')}; peak RSS {run.peak_mib:.0f} MiB"
            )
        if "instant" in wanted:
            run = scenario("instant", root, sw, api, files, RAISED_LIMITS, INSTANT)
            print(f"\n[instant] emulator answers at once, limits {RAISED_LIMITS[0]}/s")
            print(
                f"  pipeline wall time {run.seconds:.1f} s (target <= 25 s; the phased run model took 102 s)"
            )
            print(f"  status calls per job {run.status_per_job:.2f}; answers of 429: {run.answers[429]}")
            print_timeline(run)
            print(
                f"  completed {run.result.get('completed')} failed {run.result.get('failed')}; peak RSS {run.peak_mib:.0f} MiB"
            )
        if "nights" in wanted:
            sizes = [int(n) for n in args.nights.split(",")]
            peaks, child_peaks = [], []
            for n in sizes:
                clips = [(f"n{n}/clip-{i:05d}.wav", 12.0 + i % 7) for i in range(n)]
                run = scenario(f"night-{n}", root, sw, api, clips, RAISED_LIMITS, INSTANT)
                peaks.append(run.peak_mib)
                child_peaks.append(run.children_peak_mib)
                print(
                    f"\n[night of {n}] {run.seconds:.1f} s, peak RSS {run.peak_mib:.0f} MiB (its dataset child "
                    f"{run.children_peak_mib:.0f} MiB), completed {run.result.get('completed')}"
                )
            print(
                f"  peak RSS {sizes[-1]} vs {sizes[0]} recordings: {peaks[-1] / peaks[0]:.2f}x (target <= 1.0x, flat); "
                f"the dataset child's {child_peaks[-1] / child_peaks[0]:.2f}x"
            )
        if "workers" in wanted:
            from localstack.prefect_server import prefect_server

            sizes = [int(n) for n in args.nights.split(",")]
            tops = []
            print("\n[workers] the same nights on a process worker, handed to the pool in batches of 50")
            (root / "prefect-server").mkdir()
            # A deployment's server, as in production: `prefect server start` on PostgreSQL (the
            # temporary server's SQLite answers "database is locked" under a night of batch runs).
            with prefect_server(POSTGRES_URL, root / "prefect-server") as server:
                deploy(server)
                nights = [worker_night(n, root, sw, server) for n in sizes]
            for n, w in zip(sizes, nights, strict=True):
                top = max([w.night_mib, *w.batch_mib])
                tops.append(top)
                print(
                    f"  night of {n}: {w.seconds:.1f} s, {w.state.lower()}; peak RSS of the night's process "
                    f"{w.night_mib:.0f} MiB, of its {len(w.batch_mib)} batch processes "
                    f"{min(w.batch_mib, default=0):.0f}-{max(w.batch_mib, default=0):.0f} MiB, of their "
                    f"helper children {w.helper_mib:.0f} MiB"
                )
            print(
                f"  largest flow-run process, {sizes[-1]} vs {sizes[0]} recordings: {tops[-1] / tops[0]:.2f}x "
                "(target <= 1.0x, flat)"
            )
        if "sdk" in wanted:
            print("\n[sdk] the seed's batch example, public valenceai SDK, Valence only, limited workload")
            for retry in ("as-written", "retry"):
                report = sdk_scenario(root, sw, files, retry)
                print(
                    f"  {retry:10}: {report['seconds']:7.1f} s, {report['outcome']}, peak RSS {report['peak_mib']:.0f} MiB"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
