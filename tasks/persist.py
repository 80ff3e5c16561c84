"""The analytics dataset: stored results go in one commit per run; nightly compaction.

Both (and the nightly summary's pictures, tasks/report.py) run in the run's dataset child (`valence-pipeline dataset worker`), a process of its own
started when the run starts: delta-rs brings about 150 MiB of library code and buffers the
moment it is used, so the flow process stays bounded by the recordings in flight, and the
child hands every page back when it exits. Started early, its imports (about 2 s) are paid
while the run waits on providers, not after the last result; the nightly run's compaction goes
to it at once and runs beside the processing. One request at a time, JSON lines on its stdin
and stdout; the child exits when its stdin closes, so a killed run leaves no child behind.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from typing import IO, Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from valence_client.redaction import redact
from valence_pipeline.runtime import runtime

log = logging.getLogger(__name__)


@task(
    name="export-dataset",
    task_run_name="export dataset {run_id}",
    retries=2,
    retry_delay_seconds=[5, 30],
    cache_policy=NO_CACHE,
)
def export_dataset(run_id: str, recording_ids: list[int] | None) -> list[str]:
    """One dataset commit for what the run stored (not a file per recording), read from the
    database so the dataset and the database agree row for row; the recordings become
    `completed`. `recording_ids` None: every stored recording, a crash's leftovers included."""
    return list(DATASET_CHILD.call({"op": "export", "run_id": run_id, "recordings": recording_ids}))


@task(
    name="compact-dataset",
    task_run_name="compact dataset",
    retries=2,
    retry_delay_seconds=[5, 30],
    cache_policy=NO_CACHE,
)
def compact_dataset(run_id: str) -> int:
    """Nightly housekeeping: small files merged per partition, crash leftovers removed.
    A concurrent run's commit wins and this one retries on the new snapshot."""
    merged = int(DATASET_CHILD.call({"op": "compact", "run_id": run_id}))
    log.info("compaction merged %d small files", merged)
    return merged


def export_now(run_id: str, recording_ids: list[int] | None) -> list[str]:
    """What `export_dataset` runs, in the process that calls it."""
    rt = runtime()
    return rt.store.export_stored(run_id, rt.settings.output_uri, recording_ids, extra=_call_analytics)


def compact_now(run_id: str) -> int:
    rt = runtime()
    return rt.store.compact_dataset(run_id, rt.settings.output_uri)


def _call_analytics(session: Any, recording_ids: Sequence[int]) -> list[tuple[Any, list[Any]]]:
    """The per-call analytics table goes into the same dataset commit as the results."""
    import analytics
    from results_store.models import CALL_ANALYTICS_TABLE

    return [(CALL_ANALYTICS_TABLE, analytics.dataset_records(session, recording_ids))]


# --------------------------------------------------------------------------- the child


class DatasetChild:
    """The run's dataset child, as seen from the flow process (thread-safe; restarted if it died)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._stderr: IO[str] | None = None

    def start(self) -> None:
        """Start the child now, so its imports are done by the time a request comes."""
        if not self._lock.acquire(blocking=False):
            return  # a request holds it: the child is started already (and busy)
        try:
            self._ensure()
        finally:
            self._lock.release()

    def _ensure(self) -> subprocess.Popen[str]:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        self._reap()
        self._stderr = tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "commands.main", "dataset", "worker"],
            env=os.environ.copy(),  # same environment, so the same settings
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        return self._proc

    def call(self, request: dict[str, Any]) -> Any:
        """Send one request and wait for its answer; a failure raises RuntimeError (retryable)."""
        with self._lock:
            proc = self._ensure()
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(json.dumps(request) + "\n")
                proc.stdin.flush()
            except OSError:
                pass  # it died: the empty read below says how
            for line in proc.stdout:
                answer = json.loads(line)
                if "ready" in answer:
                    continue
                if "error" in answer:
                    raise RuntimeError(f"dataset {request['op']} failed: {redact(answer['error'])}")
                return answer["result"]
            raise RuntimeError(f"dataset {request['op']} failed: the child exited: {self._reap()}")

    def close(self) -> None:
        """Let the child finish the request it is on, then end it."""
        with self._lock:
            self._reap()

    def _reap(self) -> str:
        """Stop the child (if any) and return the end of what it wrote to stderr, redacted."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.stdin is not None:
                try:
                    proc.stdin.close()
                except OSError:
                    pass
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        text = ""
        if self._stderr is not None:
            self._stderr.seek(0)
            text = redact(self._stderr.read()[-3000:])
            self._stderr.close()
            self._stderr = None
        return text


DATASET_CHILD = DatasetChild()
"""The flow process's one dataset child (a flow run is one process; its tasks share it)."""


def serve_requests(requests: IO[str], answers: IO[str]) -> int:
    """The child's side: pay the imports first, then answer requests until stdin closes."""
    import deltalake  # noqa: F401  (the imports the first request would otherwise wait for)

    import analytics  # noqa: F401
    from results_store import dataset  # noqa: F401

    runtime().store  # noqa: B018  (connect now, too)

    def answer(payload: dict[str, Any]) -> None:
        answers.write(json.dumps(payload) + "\n")
        answers.flush()

    answer({"ready": True})
    for line in requests:
        request = json.loads(line)
        try:
            if request["op"] == "export":
                answer({"result": export_now(request["run_id"], request.get("recordings"))})
            elif request["op"] == "compact":
                answer({"result": compact_now(request["run_id"])})
            elif request["op"] == "pictures":
                from tasks.report import pictures_markdown

                answer({"result": pictures_markdown(dt.date.fromisoformat(request["day"]))})
            else:
                answer({"error": f"unknown request {request['op']!r}"})
        except Exception as exc:  # the parent's task decides about retries
            log.exception("dataset %s failed", request.get("op"))
            answer({"error": f"{type(exc).__name__}: {exc}"})
    # Every answer is written and every commit made: skip the interpreter's teardown of
    # delta-rs and Arrow (about 2 s the run would wait for at its end).
    logging.shutdown()
    os._exit(0)
