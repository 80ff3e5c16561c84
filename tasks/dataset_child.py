"""The run's dataset child (`valence-pipeline dataset worker`) and what it runs: the dataset
commit of stored results, nightly compaction, the nightly summary's pictures.

A process of its own, started when the run starts: delta-rs brings about 150 MiB of library
code and buffers the moment it is used, so the flow process stays bounded by the recordings in
flight, and the child hands every page back when it exits. Started early, its imports (about
2 s) are paid while the run waits on providers, not after the last result; the nightly run's
compaction goes to it at once and runs beside the processing. One request at a time, JSON
lines on its stdin and stdout; the child exits when its stdin closes, so a killed run leaves no
child behind. The Prefect tasks that send it work are in tasks/persist.py and tasks/report.py.
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

from valence_client.redaction import redact
from valence_pipeline.runtime import runtime

log = logging.getLogger(__name__)


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


def pictures_markdown(day: dt.date) -> str:
    """Markdown showing the day's distribution of emotions and its escalated calls' timelines
    inline (`analytics.pictures.publish_night`, which also writes every call's picture beside
    the dataset); a note instead when the day has more calls than `pictures_max_calls`. Never
    fails the run: the summary says why it has no pictures."""
    import sqlalchemy as sa

    from analytics.store import CALL_SCOPE
    from results_store.models import CallAnalyticsRow

    rt = runtime()
    limit = rt.settings.pictures_max_calls
    try:
        with rt.store.store.session_scope() as session:
            calls = session.scalar(
                sa.select(sa.func.count())
                .select_from(CallAnalyticsRow)
                .where(CallAnalyticsRow.processing_date == day, CallAnalyticsRow.scope == CALL_SCOPE)
            )
            if not calls:
                return ""
            if calls > limit:
                return (
                    f"_{calls} calls on {day}: more than VALENCE_PIPELINE_PICTURES_MAX_CALLS ({limit}), "
                    "not drawn here._"
                )
            # Imported only to draw: matplotlib adds ~20 MiB to the child, which a night with
            # too many calls to draw would carry for nothing.
            from analytics.pictures import publish_night

            _, markdown = publish_night(session, day, rt.settings, every_call=False)
            return markdown
    except Exception as exc:  # noqa: BLE001 - pictures are a view: the night's results stand
        log.warning("pictures of %s not drawn: %s", day, exc)
        return f"_The pictures of {day} could not be drawn: {redact(str(exc))}_"
