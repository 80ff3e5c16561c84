"""The pipelined run: every recording moves to its next step as soon as its last one is done.

No phases. One worker process runs three kinds of threads over the database's states:

- **checks** take a recording on (a lease in the database), run preflight, look for the same
  content already analysed, take its audio from the run's budget and plan its provider calls;
- **senders**, a pool per provider, upload or submit each call (the provider's id is stored
  before any byte goes up) and resume a call the provider already has instead of paying again;
  each provider paces at its own shared limit, so both providers' limits are used at once;
- a **harvester** asks about the jobs that are due (read from the database, claimed with a
  lease: the pattern of Airflow's triggerer), stores each result the moment it arrives, and
  finishes the recording when its last call is final. No thread sleeps per waiting job.

A step that fails for one recording is retried a bounded number of times, then that recording
ends `failed` with its reason; the others go on. Any number of these processes (a night's
batches on several workers) share the work through leases, and a recording whose worker died
is taken over when its lease runs out. Nothing here imports Prefect: threads carry the
caller's context (`contextvars`), so an orchestrator's run logger still sees their lines.
"""

from __future__ import annotations

import contextvars
import heapq
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import Any, TypeVar

from results_store.models import TERMINAL_STATUSES, JobStatus
from valence_client.errors import (
    APIConnectionError,
    AuthenticationError,
    InsufficientCreditsError,
    NotFoundError,
    RateLimitError,
    ValenceSDKException,
)
from valence_client.models import EmotionSegment
from valence_pipeline.preflight import run_preflight
from valence_pipeline.runtime import Runtime, release_free_heap
from valence_pipeline.s3 import ObjectChangedError, SourceReadError
from valence_pipeline.settings import Settings
from valence_pipeline.sources import open_payload
from valence_pipeline.work import DueJob, RecordingState, WorkItem, plan_work

log = logging.getLogger("valence_pipeline.run")
T = TypeVar("T")

# Provider states that mean "the provider has the audio": never upload it again.
VALENCE_HAS_AUDIO = {"upload_completed", "processing", "completed"}
VALSEA_HAS_AUDIO = {"queued", "in_progress", "completed"}
DONE = {status.value for status in TERMINAL_STATUSES}
VALSEA_NO_CREDITS = "valsea_out_of_credits"
SENDING = "sending:"
"""External id of a call without an idempotency key on its way (`Engine._send_unkeyed`)."""
TRIM_EVERY_S = 10.0
"""How often the driver hands free heap pages back to the system (`release_free_heap`)."""
UNKEYED = ("discrete", "prosody")
"""Modes whose billed call has no idempotency key: a lost answer leaves the outcome unknown."""


@dataclass(frozen=True)
class RunScope:
    """Who is working and for which run."""

    run_id: str
    """The top-level run (night, upload run, operator run): budget, flags, summary."""
    batch_run_id: str
    """This flow run (a batch of the night, or the top-level run itself): job lineage."""
    worker: str
    """Who holds leases: unique per process and run."""
    resend_unknown: bool = False
    """Send again a create call whose answer was lost (an operator's retry, or the setting)."""


def expected_seconds(provider: str, duration_s: float, settings: Settings) -> float:
    """When the provider should be done, from its pickup delay and rate per audio hour."""
    hours = duration_s / 3600.0
    if provider == "valence":
        return settings.valence_pickup_delay_s + hours * settings.valence_s_per_audio_hour
    return settings.valsea_pickup_delay_s + hours * settings.valsea_s_per_audio_hour


class Backoff:
    """Capped exponential intervals with +-25% jitter between later status calls."""

    def __init__(self, settings: Settings, rng: random.Random | None = None) -> None:
        self.first = settings.poll_min_interval_s
        self.cap = settings.poll_max_interval_s
        self.rng = rng or random.Random()

    def interval(self, attempt: int) -> float:
        base = min(self.cap, self.first * (2 ** max(0, attempt - 1)))
        return base * self.rng.uniform(0.75, 1.25)


class RunAborted(RuntimeError):
    """Something that stops the whole run, not one recording (a refused API key)."""


def is_transient(exc: BaseException) -> bool:
    """Worth trying the same step again later (the transport already retried for seconds)."""
    if isinstance(exc, ValenceSDKException | SourceReadError):
        return True if isinstance(exc, SourceReadError) else exc.retryable
    # S3 and network trouble outside our client, a database that went away for a moment.
    return isinstance(exc, OSError | ConnectionError | TimeoutError) or type(exc).__module__.startswith(
        ("botocore", "urllib3", "sqlalchemy", "psycopg")
    )


@dataclass
class _Later:
    """Work to pick up again at a given time (a retry's backoff, a wait for a twin)."""

    heap: list[tuple[float, int, str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    seq: int = 0

    def push(self, at: float, kind: str, payload: Any) -> None:
        with self.lock:
            self.seq += 1
            heapq.heappush(self.heap, (at, self.seq, kind, payload))

    def due(self, now: float) -> list[tuple[str, Any]]:
        out = []
        with self.lock:
            while self.heap and self.heap[0][0] <= now:
                _, _, kind, payload = heapq.heappop(self.heap)
                out.append((kind, payload))
        return out

    def __len__(self) -> int:
        with self.lock:
            return len(self.heap)

    def pending(self) -> set[int]:
        """Recordings with something scheduled here."""
        with self.lock:
            return {p if isinstance(p, int) else p.recording_id for _, _, _, p in self.heap}


def may_have_been_done(exc: BaseException) -> bool:
    """Whether a billed call that raised `exc` may all the same have been done (and paid) by
    the provider, so that sending it again could pay twice.

    Yes: the connection failed after the request may have arrived; the provider answered 2xx
    but the answer could not be read; the process is being stopped (not an `Exception`: a
    signal, a cancellation) while the call may be on the wire. No: the provider answered with
    an error status, or the call failed before its request was whole (the limiter, reading our
    own audio). The transport lets nothing that happens after an answer arrives escape as
    anything but its own errors (a limiter that cannot take the headers is logged), so an
    error of ours is always from before the answer.
    """
    if isinstance(exc, APIConnectionError):
        return exc.may_have_arrived
    if isinstance(exc, ValenceSDKException):
        return exc.status is not None and 200 <= exc.status < 300
    return not isinstance(exc, Exception)


class Engine:
    def __init__(
        self,
        rt: Runtime,
        scope: RunScope,
        *,
        clock: Callable[[], float] = time.time,
        on_stored: Callable[[int], None] | None = None,
    ) -> None:
        self.rt = rt
        self.on_stored = on_stored
        """Called with a recording's id once all its results are stored (per-call analytics)."""
        self.settings = rt.settings
        self.store = rt.store
        self.scope = scope
        self.clock = clock
        self.backoff = Backoff(self.settings)
        s = self.settings
        self.checks = ThreadPoolExecutor(s.check_workers, thread_name_prefix="check")
        self.senders = {
            p: ThreadPoolExecutor(s.max_concurrent_files, thread_name_prefix=f"send-{p}") for p in s.providers
        }
        self.harvesters = ThreadPoolExecutor(s.harvest_workers, thread_name_prefix="harvest")
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.aborted: str | None = None
        self.later = _Later()
        self._lock = threading.Lock()
        self.active: dict[int, int] = {}
        """Recordings with work queued or running in this process (count of pieces)."""
        self.held: set[int] = set()
        """Recordings this worker holds a lease on until they are done."""
        self.deferred: set[int] = set()
        """Accepted, but over the run's audio budget: left for a later run."""
        self.item_attempts: dict[tuple[int, str, int | None], int] = {}
        self.backlog: deque[int] = deque()
        """Recordings not yet taken on: fed to the checks a few at a time (`_feed`), so the
        queued work, like the memory it holds, is bounded by the files in flight."""
        self.in_backlog: set[int] = set()
        self.taking = 0
        """Take-ons queued or running."""
        self.feed_limit = 4 * s.check_workers
        self.active_limit = self.feed_limit + 4 * s.max_concurrent_files * len(s.providers)
        """Recordings with work queued or running here at most: checks run faster than
        rate-limited sends, and without this bound a night's checked recordings (and their
        queued sends) would pile up in memory. Four sends queued per sending thread keeps
        every provider busy while the other is slower."""
        self.requeued: set[int] = set()
        """Taken on since the watch loop last began to read: a done status it read may predate it."""
        self.watching: set[int] = set()
        """Recordings taken on (or to sweep) and not yet seen done: what the watch loop reads.
        Not the backlog, so each look at the database is bounded by the files in flight, not
        by the size of the night (its backlog is this process's own until fed)."""
        self._flag_cache: tuple[float, dict[str, Any]] = (0.0, {})

    # --- threads carry the caller's context ---------------------------------------------
    def _spawn(self, pool: ThreadPoolExecutor, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        return pool.submit(contextvars.copy_context().run, fn, *args)

    def _begin(self, rid: int) -> None:
        with self._lock:
            self.active[rid] = self.active.get(rid, 0) + 1

    def _end(self, rid: int) -> None:
        with self._lock:
            left = self.active.get(rid, 1) - 1
            if left <= 0:
                self.active.pop(rid, None)
            else:
                self.active[rid] = left

    def _queue_take_on(self, rid: int) -> None:
        self._begin(rid)
        with self._lock:
            self.taking += 1
            self.watching.add(rid)
            self.requeued.add(rid)
        self._spawn(self.checks, self._run_take_on, rid)

    def _run_take_on(self, rid: int) -> None:
        try:
            self._guarded(rid, self._take_on, rid)
        finally:
            with self._lock:
                self.taking -= 1
            self._feed()

    def _feed(self) -> None:
        """Queue the backlog's next recordings while fewer than `feed_limit` take-ons wait and
        fewer than `active_limit` recordings have work here."""
        while not self.aborted and not self.stop.is_set():
            with self._lock:
                if (
                    not self.backlog
                    or self.taking >= self.feed_limit
                    or len(self.active) >= self.active_limit
                ):
                    return
                rid = self.backlog.popleft()
                self.in_backlog.discard(rid)
            self._queue_take_on(rid)

    def _queue_send(self, item: WorkItem) -> None:
        self._begin(item.recording_id)
        self._spawn(self.senders[item.provider], self._guarded, item.recording_id, self._send, item)

    def _guarded(self, rid: int, fn: Callable[..., None], *args: Any) -> None:
        try:
            if not self.aborted:
                fn(*args)
        except RunAborted as exc:
            self.abort(str(exc))
        except Exception:
            log.exception("unexpected error on recording %d", rid)
            self._fail_recording(rid, "internal_error: see the run's logs")
        finally:
            self._end(rid)
        # The last piece of work on a recording here settles its state from its jobs.
        if not self.aborted:
            try:
                self._finalize(rid)
            except Exception:
                log.exception("recording %d: could not settle its state", rid)

    def abort(self, reason: str) -> None:
        if not self.aborted:
            log.error("stopping the run: %s", reason)
        self.aborted = self.aborted or reason
        self.wake.set()

    # --- the driver ---------------------------------------------------------------------
    def drive(
        self,
        recording_ids: Iterable[int],
        *,
        sweep_only: bool = False,
        others_done: Callable[[], bool] = lambda: True,
    ) -> None:
        """Work until every one of `recording_ids` is done (or left for a later run).

        `sweep_only`: take on only what other workers abandoned (lease expired) and, once
        `others_done()`, whatever nobody took: the night's planner while its batches run.
        """
        ids = list(dict.fromkeys(recording_ids))
        if sweep_only:  # nothing of its own to feed: every id is watched until it is done
            self.watching.update(ids)
        self.rt.learn_provider_limits()
        harvester = threading.Thread(
            target=contextvars.copy_context().run, args=(self._harvest_loop,), name="harvester", daemon=True
        )
        harvester.start()
        try:
            if not sweep_only:
                with self._lock:
                    self.backlog.extend(ids)
                    self.in_backlog.update(ids)
                self._feed()
            del ids  # the backlog has them: not a second copy of the night held all run
            self._watch(sweep_only, others_done)
        finally:
            self.stop.set()
            self.wake.set()
            harvester.join(timeout=60)
            for pool in (self.checks, *self.senders.values(), self.harvesters):
                pool.shutdown(wait=True, cancel_futures=bool(self.aborted))
            for rid in list(self.held):
                self.store.release(rid, self.scope.worker)
        if self.aborted:
            raise RunAborted(self.aborted)

    def _watch(self, sweep_only: bool, others_done: Callable[[], bool]) -> None:
        lease = self.settings.lease_s
        started = self.clock()
        last_renew = last_check = last_sweep = 0.0
        last_trim = started
        idle_since: dict[int, float] = {}
        while not self.aborted:
            self._feed()
            now = self.clock()
            for kind, payload in self.later.due(now):
                if kind == "take_on":
                    self._queue_take_on(payload)
                else:
                    self._queue_send(payload)
            if now - last_renew >= lease / 3:
                with self._lock:
                    held = list(self.held)
                if held:
                    self.store.renew(held, self.scope.worker, lease)
                last_renew = now
            if now - last_check >= self.settings.watch_interval_s:
                last_check = now
                with self._lock:
                    watched = list(self.watching)
                    self.requeued.clear()
                statuses = self.store.statuses(watched)
                waiting = self.later.pending()
                with self._lock:
                    for rid, status in statuses.items():
                        # Done for good unless this process is taking it on (again): a failed
                        # recording a new run reopens reads as failed until its take-on has
                        # reset it, and must stay watched until its jobs are harvested.
                        mine = rid in self.active or rid in self.requeued or rid in waiting
                        if status in DONE and not mine:
                            self.held.discard(rid)
                            self.watching.discard(rid)
                    held_now = set(self.held)
                    busy = set(self.active)
                    fed_all = not self.in_backlog  # the backlog is fed in order
                pending = [r for r in watched if statuses.get(r) not in DONE and r not in self.deferred]
                if not pending and fed_all and not busy and not len(self.later):
                    return
                idle = [r for r in pending if r not in busy and r not in waiting]
                if idle:
                    # Never-claimed work is the batches' until they have all ended, or until
                    # they have had a fair while to start (a worker that died before starting
                    # its batch leaves it scheduled for good).
                    patience = self.settings.sweep_patience_s or max(10 * lease, 300.0)
                    abandoned_only = sweep_only and not others_done() and now - started < patience
                    for rid in self.store.unclaimed(idle, self.scope.worker, abandoned_only=abandoned_only):
                        if rid not in held_now:
                            log.info("taking over recording %d (nobody is working on it)", rid)
                        self._queue_take_on(rid)
                # A recording this worker holds, still being sent, with nothing queued for it for
                # a lease's length: take it on again (idempotent: only what is missing is sent).
                # Work lost to a bug heals itself.
                sending = ("discovered", "accepted", "uploading")
                for rid in [r for r in idle if r in held_now and statuses.get(r) in sending]:
                    since = idle_since.setdefault(rid, now)
                    if now - since >= lease:
                        idle_since.pop(rid)
                        self._queue_take_on(rid)
                for rid in [r for r in idle_since if r not in idle]:
                    idle_since.pop(rid)
                if now - last_sweep >= 5.0:
                    last_sweep = now
                    for rid in self.store.finishable([r for r in idle if statuses.get(r) == "submitted"]):
                        self._queue_take_on(rid)
            if now - last_trim >= TRIM_EVERY_S:
                last_trim = now
                release_free_heap()
            time.sleep(0.05)

    # --- checks: take a recording on -------------------------------------------------------
    def _take_on(self, rid: int) -> None:
        state = self.store.claim(rid, self.scope.worker, self.settings.lease_s)
        if state is None:
            return  # another worker holds it
        with self._lock:
            self.held.add(rid)
        if state.status in ("completed", "rejected", "superseded", "stored"):
            self._let_go(rid)
            return
        try:
            state = self._check(state)
            if state is None:
                return
            items = plan_work(state, self.settings)
            for item in items:
                self._queue_send(item)
        except RunAborted:
            raise
        except ObjectChangedError as exc:
            self._supersede(rid, exc)
        except Exception as exc:
            if not is_transient(exc):
                raise
            self._retry_recording(rid, f"{type(exc).__name__}: {exc}")

    def _supersede(self, rid: int, exc: ObjectChangedError) -> None:
        """The object was overwritten after it was listed: this version is gone (nothing of it
        is sent); the new version is a recording of its own, found by the next listing."""
        log.warning("recording %d: %s; superseded by the object's new version", rid, exc)
        self.store.set_status(rid, "superseded", reason=f"the object changed after it was listed: {exc}")
        self._let_go(rid)

    def _check(self, state: RecordingState) -> RecordingState | None:
        """Preflight, twins and budget; the state to plan from, or None if there is nothing to
        send now."""
        rid = state.id
        if state.status == "failed":  # a retry: keep what preflight learned, resend what failed
            self.store.set_status(rid, "accepted" if state.info is not None else "discovered")
            state = self.store.load_recording(rid)
        if state.info is None or state.status == "discovered":
            verdict = run_preflight(self.rt.s3, state.obj, self.settings)
            self.store.record_verdict(rid, verdict)
            if not verdict.accepted:
                log.info("rejected %s: %s", state.uri, verdict.reason)
                self._let_go(rid)
                return None
            log.info(
                "accepted %s (%.1f s, %s)",
                state.uri,
                verdict.info.duration_s if verdict.info else 0,
                verdict.route,
            )
            state = self.store.load_recording(rid)
        if state.status != "accepted":
            return state  # already under way: plan to resume what is missing
        assert state.sha256 is not None and state.info is not None
        claim = self.store.take_content(rid, state.sha256, self.scope.run_id)
        if claim.action == "reuse":
            log.info(
                "%s has the same content as %s: reusing its results, nothing paid", state.uri, claim.twin
            )
            self._stored(rid)
            self._let_go(rid)
            return None
        if claim.action == "wait":
            log.info(
                "%s has the same content as %s, in flight: waiting for its results", state.uri, claim.twin
            )
            self.later.push(self.clock() + self.settings.twin_wait_s, "take_on", rid)
            return None
        if not self.store.reserve_audio(self.scope.run_id, state.info.duration_s):
            log.info("%s is over the run's audio budget: left for a later run", state.uri)
            self.store.set_status(rid, "accepted")
            with self._lock:
                self.deferred.add(rid)
                self.watching.discard(rid)  # left for a later run: nothing to watch
            self._let_go(rid)
            return None
        return self.store.load_recording(rid)

    def _let_go(self, rid: int) -> None:
        with self._lock:
            self.held.discard(rid)
        self.store.release(rid, self.scope.worker)

    def _retry_recording(self, rid: int, error: str) -> None:
        s = self.settings
        attempts_left = self.store.retry_later(
            rid, error, max_attempts=s.step_attempts, delay_s=s.step_retry_delay_s
        )
        if attempts_left:
            log.warning("recording %d: %s; trying again in %.0f s", rid, error, s.step_retry_delay_s)
            self.later.push(self.clock() + s.step_retry_delay_s, "take_on", rid)
        else:
            log.error("recording %d failed: %s", rid, error)
            self._let_go(rid)

    def _fail_recording(self, rid: int, reason: str) -> None:
        try:
            self.store.fail(rid, reason)
        finally:
            self._let_go(rid)

    # --- senders: one provider call ---------------------------------------------------------
    def _flags(self) -> dict[str, Any]:
        at, flags = self._flag_cache
        if self.clock() - at > 2.0:
            flags = self.store.run_flags(self.scope.run_id)
            self._flag_cache = (self.clock(), flags)
        return flags

    def _send(self, item: WorkItem) -> None:
        try:
            self._send_once(item)
        except RunAborted:
            raise
        except AuthenticationError as exc:
            raise RunAborted(f"{item.provider} refused the API key ({exc.status})") from exc
        except InsufficientCreditsError as exc:
            self.store.set_run_flag(
                self.scope.run_id,
                VALSEA_NO_CREDITS,
                "Valsea answered 402 (insufficient credits): no new Valsea jobs for the rest of this run",
            )
            self._call_failed(item, "insufficient_credits", str(exc))
        except ObjectChangedError as exc:
            self._supersede(item.recording_id, exc)
        except APIConnectionError as exc:
            if item.mode in UNKEYED and exc.may_have_arrived:
                # No idempotency key: sending it again could pay twice. The job stays `unknown`
                # (see `_send_unkeyed`); `retry-failed` decides.
                log.warning("%s: the answer to the call was lost; outcome unknown, not resent", item.label)
            else:
                self._send_failed(item, exc)
        except Exception as exc:
            if not is_transient(exc) and not isinstance(exc, ValenceSDKException):
                raise
            self._send_failed(item, exc)

    def _send_failed(self, item: WorkItem, exc: BaseException) -> None:
        if isinstance(exc, ValenceSDKException) and not exc.retryable:
            self._call_failed(item, exc.error_code or type(exc).__name__, str(exc))
            return
        key = (item.recording_id, item.provider, item.channel)
        with self._lock:
            attempt = self.item_attempts[key] = self.item_attempts.get(key, 0) + 1
        if attempt < self.settings.step_attempts:
            delay = self.settings.step_retry_delay_s * attempt
            log.warning("%s: %s: %s; trying again in %.0f s", item.label, type(exc).__name__, exc, delay)
            self.later.push(self.clock() + delay, "send", item)
            return
        self._call_failed(item, "retries_exhausted", f"{type(exc).__name__}: {exc}")

    def _call_failed(self, item: WorkItem, code: str, message: str) -> None:
        log.error("%s failed: %s: %s", item.label, code, message)
        self.store.record_failure(
            item, error_code=code, error_message=message, run_id=self.scope.batch_run_id
        )

    def _send_once(self, item: WorkItem) -> None:
        if item.provider == "valsea" and self._flags().get(VALSEA_NO_CREDITS):
            self._call_failed(item, "insufficient_credits", "Valsea credits ran out earlier in this run")
            return
        job = self.store.latest_job(item)
        if job is not None:
            if job.status in (JobStatus.COMPLETED, JobStatus.SUBMITTED, JobStatus.PROCESSING):
                return  # done, or the harvester's
            if job.status == JobStatus.UNKNOWN and not (
                self.scope.resend_unknown or self.settings.resend_unknown
            ):
                return  # stays unknown; the recording ends failed saying so
            if job.status == JobStatus.UPLOADING and job.external_id.startswith(SENDING):
                # A worker died while this call was on its way, or before it stored the answer:
                # the provider may have it (and billed it).
                self.store.mark_unknown(job.id, "the worker stopped while the call was on its way")
                if not (self.scope.resend_unknown or self.settings.resend_unknown):
                    log.warning("%s: a stopped worker's call may have arrived; not resent", item.label)
                    return
            elif job.status == JobStatus.UPLOADING and self._provider_has(item, job.external_id):
                log.info("resuming %s: the provider already has it as %s", item.label, job.external_id)
                self.store.job_submitted(job.id, self._first_poll(item))
                self.wake.set()
                return
        self._submit(item)

    def _provider_has(self, item: WorkItem, external_id: str) -> bool:
        try:
            if item.provider == "valence":
                return self.rt.valence.asynch.status(external_id).status in VALENCE_HAS_AUDIO
            return self.rt.valsea.status(external_id).status in VALSEA_HAS_AUDIO
        except NotFoundError:
            return False  # expired or never completed: submit again

    def _first_poll(self, item: WorkItem) -> float:
        return self.clock() + expected_seconds(item.provider, item.info.duration_s, self.settings)

    def _submit(self, item: WorkItem, *, attempts: int = 1) -> None:
        payload = open_payload(self.rt.s3, item.obj, item.info, item.provider, item.channel)
        stream, size, name = payload.stream, payload.size, payload.name
        try:
            if item.mode == "discrete":
                self._analyse_discrete(item, stream)
            elif item.mode == "async":
                job_ids: list[int] = []

                def persist_request_id(request_id: str) -> None:
                    # Before any part goes up: a crash from here on resumes from this row.
                    job_ids.append(
                        self.store.record_job(
                            item,
                            external_id=request_id,
                            status=JobStatus.UPLOADING,
                            run_id=self.scope.batch_run_id,
                            next_poll_at=None,
                        )
                    )

                request_id = self.rt.valence.asynch.upload(
                    stream, size=size, file_name=name, on_initiated=persist_request_id
                )
                self.store.job_submitted(job_ids[0], self._first_poll(item))
                log.info("%s: uploaded as %s", item.label, request_id)
            else:
                self._submit_prosody(item, stream, size, name, attempts)
            self.wake.set()
        finally:
            payload.close()

    def _send_unkeyed(self, item: WorkItem, call: Callable[[], T]) -> tuple[int, T]:
        """A billed call with no idempotency key and no way to ask the provider about it
        afterwards (Valsea's submit, Valence's discrete analysis): its intent is stored first
        (an `uploading` job named `sending:`), so a process that dies while it is on its way, or
        after its answer arrived but before that was stored, leaves a job whose outcome is
        unknown, which is never blindly sent again (see `_send_once`), instead of no trace.
        Returns the intent's job id (the caller settles it with the answer) and the answer."""
        marker = self.store.record_sending(item, run_id=self.scope.batch_run_id)
        try:
            answer = call()
        except BaseException as exc:
            if may_have_been_done(exc):
                self.store.mark_unknown(marker, str(exc) or type(exc).__name__)
            else:
                self.store.drop_job(marker)  # the provider answered no, or nothing was sent
            raise
        return marker, answer

    def _analyse_discrete(self, item: WorkItem, stream: Any) -> None:
        marker, result = self._send_unkeyed(
            item, lambda: self.rt.valence.discrete.emotions(file=stream, model=item.model)
        )
        # The discrete API has no request id: the call's natural key is its recording, model
        # and channel (two keys with the same bytes are two recordings).
        channel = "mix" if item.channel is None else str(item.channel)
        segment = EmotionSegment(
            start_s=0.0,
            end_s=item.info.duration_s,
            emotion=result.main_emotion,
            confidence=result.confidence,
            all_predictions=result.all_predictions,
        )
        self.store.store_discrete(
            marker, f"discrete:{item.recording_id}:{item.model}:{channel}", segment, self.scope.batch_run_id
        )
        log.info("%s: analysed (discrete), stored", item.label)

    def _submit_prosody(self, item: WorkItem, stream: Any, size: int, name: str, attempts: int) -> None:
        """Valsea's submit has no idempotency key and no way to list jobs (`_send_unkeyed`)."""
        s = self.settings
        marker, job = self._send_unkeyed(
            item,
            lambda: self.rt.valsea.submit(
                stream, file_name=name, size=size, language=s.valsea_language,
                granularity=s.valsea_granularity, response_format=s.valsea_response_format,
            ),
        )  # fmt: skip
        self.store.job_sent(
            marker, external_id=job.job_id, next_poll_at=self._first_poll(item), attempts=attempts
        )
        log.info("%s: submitted as %s", item.label, job.job_id)

    # --- the harvester --------------------------------------------------------------------
    def _harvest_loop(self) -> None:
        batch = self.settings.harvest_workers * 2
        while not self.stop.is_set() and not self.aborted:
            try:
                due = self.store.claim_due_jobs(self.scope.worker, self.settings.lease_s, batch)
            except Exception:
                log.exception("could not read the due jobs; trying again")
                self.stop.wait(2.0)
                continue
            if due:
                wait_futures([self._spawn(self.harvesters, self._harvest_one, job) for job in due])
                continue
            next_due = self.store.next_due()
            pause = 1.0 if next_due is None else min(1.0, max(0.02, next_due - self.clock()))
            self.wake.wait(pause)
            self.wake.clear()

    def _harvest_one(self, job: DueJob) -> None:
        final = False
        try:
            final = self._poll(job)
        except AuthenticationError as exc:
            self.store.release_job(job.id)
            self.abort(f"{job.provider} refused the API key ({exc.status})")
        except Exception as exc:
            if is_transient(exc):
                self.store.poll_again(
                    job.id, self.clock() + self.backoff.interval(job.polls + 1), processing=False
                )
            else:
                log.exception("job %s: unexpected error", job.external_id)
                self.store.fail_job(job.id, "internal_error", f"{type(exc).__name__}: {exc}")
                final = True
        if final:
            self._finalize(job.recording_id)

    def _poll(self, job: DueJob) -> bool:
        """Ask once; store the result the moment it is there. True when the job is final."""
        settings = self.settings
        try:
            if job.provider == "valence":
                status = self.rt.valence.asynch.status(job.external_id)
                if status.status == "completed":
                    self.store.complete_job(job.id, self.scope.batch_run_id, segments=list(status.emotions))
                    log.info("valence %s: done, %d segments stored", job.external_id, len(status.emotions))
                    return True
                failed = status.status == "failed"
            else:
                vjob = self.rt.valsea.status(job.external_id)
                if vjob.status == "completed":
                    result = self.rt.valsea.result(job.external_id)
                    self.store.complete_job(job.id, self.scope.batch_run_id, prosody=result)
                    log.info("valsea %s: done, stored", job.external_id)
                    return True
                failed = vjob.status == "failed"
            if failed:
                self.store.fail_job(job.id, "provider_failed", f"{job.provider.capitalize()} reported failed")
                log.error("%s job %s: the provider reported failed", job.provider, job.external_id)
                return True
            next_at = self.clock() + self.backoff.interval(job.polls + 1)
        except RateLimitError as exc:
            next_at = self.clock() + max(exc.retry_after or 0.0, self.backoff.first)
        except NotFoundError as exc:
            if job.provider == "valsea" and not job.resubmitted:
                return self._resubmit_expired(job)
            self.store.fail_job(job.id, "not_found", str(exc))
            return True
        except ValenceSDKException as exc:
            if not exc.retryable:
                self.store.fail_job(job.id, exc.error_code or "error", str(exc))
                return True
            next_at = self.clock() + self.backoff.interval(job.polls + 1)
        if self.clock() - job.submitted_at > settings.poll_deadline_s:
            self.store.fail_job(job.id, "timeout", f"no result after {settings.poll_deadline_s:.0f} s")
            return True
        self.store.poll_again(job.id, next_at, processing=True)
        return False

    def _resubmit_expired(self, job: DueJob) -> bool:
        """A Valsea result that expired before we fetched it is submitted again, once."""
        state = self.store.load_recording(job.recording_id)
        [item] = [i for i in plan_work(state, self.settings) if i.slot == (job.provider, job.channel)]
        log.warning("%s expired before it was fetched; submitting again once", item.label)
        # The new job first: until it exists, the expired one still counts as pending, so no
        # one finishes the recording as failed in between.
        self._submit(item, attempts=2)
        self.store.fail_job(job.id, "expired", "the result expired before it was fetched")
        return False

    # --- finishing a recording ------------------------------------------------------------------
    def _finalize(self, rid: int, items: list[WorkItem] | None = None, *, pieces_of_mine: int = 0) -> None:
        """Settle the recording's state from its jobs, unless calls for it are still queued or
        running here (a retry's new call must not be judged by the failed call it replaces).
        `pieces_of_mine`: the caller's own queued piece, counted in `active`."""
        with self._lock:
            if self.active.get(rid, 0) > pieces_of_mine:
                return
        if rid in self.later.pending():
            return  # a call of it waits for its retry here
        if items is None:
            state = self.store.load_recording(rid)
            if state.info is None or state.route is None or state.sha256 is None:
                return
            items = plan_work(state, self.settings)
        status = self.store.finalize(rid, items)
        if status is None:
            return
        if status == "submitted":
            # Every call is at its provider: the harvest (any worker's) finishes it.
            self._let_go(rid)
            return
        if status == "failed":
            log.error("%s failed", items[0].obj.uri)
        else:
            log.info("%s: every result stored", items[0].obj.uri)
            self._stored(rid)
        self._let_go(rid)

    def _stored(self, rid: int) -> None:
        if self.on_stored is None:
            return
        try:
            self.on_stored(rid)
        except Exception:
            log.exception("recording %d: per-call analytics failed (results are stored)", rid)
