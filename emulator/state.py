"""The emulator's memory and rules, without HTTP: async requests, Valsea jobs, credits, the
billing ledger and the request log. One lock guards the dictionaries; each async request has
its own lock so two `complete` calls for it run one after the other. Job states are derived
from the emulated clock whenever they are read.

Lifecycle of an async request (emulated seconds):

    initiate ............ "initiated" (parts may be PUT)
    complete at t ....... "upload_completed" until the processor's next poll,
                          pickup = the next multiple of `pickup_interval_s` after t
    pickup .............. "processing" for overhead + 90 s per audio hour
    done ................ "completed" (or "failed" when the `fail` fault was drawn at complete)
    done + retention .... gone (404); a request never completed is gone at initiate + retention

A `complete` that the audio checks reject (too short, too large, not audio) answers 400 and
leaves the request "failed"; repeating the same `complete` answers the same 400. Repeating
a successful `complete` with the same parts answers 200 again and is not billed again.

A Valsea job is "queued" for `valsea_queue_s`, then "in_progress" for overhead + 0.05 s per
audio second, then "completed" (or "failed"), and is gone `retention_s` after that.
"""

from __future__ import annotations

import hashlib
import logging
import math
import tempfile
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emulator import audio
from emulator.clock import EmulatedClock
from emulator.config import MIB, EmulatorConfig
from emulator.faults import FaultInjector, FaultSpec
from emulator.ratelimit import RateLimiter
from emulator.storage import LocalParts, PartInfo, PartSigner, S3Parts, normalise_etag
from valence_client.models import (
    DEFAULT_VALENCE_MODEL,
    VALENCE_MODELS,
    EmotionSegment,
    ProsodyScores,
    ProsodyUtterance,
)

log = logging.getLogger(__name__)

ASYNC_MIN_S = 5.0
ASYNC_MAX_BYTES = 1024 * MIB
MAX_PART_NUMBER = 10_000
MAX_PART_BYTES = 5 * 1024 * MIB


class ApiError(Exception):
    """An HTTP error answer: `status` with JSON `body` (or S3-style XML when `xml`)."""

    def __init__(self, status: int, body: dict[str, Any], *, xml: bool = False) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body
        self.xml = xml


def key_id(key: str) -> str:
    """A stable, non-reversible name for an API key (what logs and records show)."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:10]


def bad_request(message: str, code: str | None = None, **extra: Any) -> ApiError:
    body: dict[str, Any] = {"error": message}
    if code:
        body["error_code"] = code
    body.update({k: v for k, v in extra.items() if v is not None})
    return ApiError(400, body)


@dataclass
class AsyncRequest:
    request_id: str
    upload_id: str
    owner: str
    model: str | None
    """The model the client asked for; None when it named none (the public SDK never does)."""
    file_name: str
    part_count: int
    created_at: float
    s3_key: str | None = None
    parts: dict[int, PartInfo] = field(default_factory=dict)
    """Parts received by our own part endpoint (local mode)."""
    completed_parts: list[tuple[int, str]] | None = None
    rejection: dict[str, Any] | None = None
    pickup_at: float = math.inf
    done_at: float = math.inf
    fails: bool = False
    segments: list[EmotionSegment] = field(default_factory=list)
    duration_s: float = 0.0
    sha256: str = ""
    size: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def status(self, now: float) -> str:
        if self.completed_parts is None:
            return "initiated"
        if self.rejection is not None:
            return "failed"
        if now < self.pickup_at:
            return "upload_completed"
        if now < self.done_at:
            return "processing"
        return "failed" if self.fails else "completed"

    def expires_at(self, retention_s: float) -> float:
        if self.completed_parts is None:
            return self.created_at + retention_s
        if self.rejection is not None:
            return self.pickup_at + retention_s
        return self.done_at + retention_s


@dataclass
class ValseaJob:
    job_id: str
    owner: str
    created_at: float
    started_at: float
    done_at: float
    fails: bool
    response_format: str
    granularity: str
    language: str | None
    scores: ProsodyScores
    utterances: list[ProsodyUtterance]
    duration_s: float
    sha256: str
    credits: int

    def status(self, now: float) -> str:
        if now < self.started_at:
            return "queued"
        if now < self.done_at:
            return "in_progress"
        return "failed" if self.fails else "completed"


class EmulatorState:
    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.clock = EmulatedClock(config.time_scale)
        self.faults = FaultInjector(config.faults, config.seed)
        self.valence_limiter = RateLimiter(config.valence_limits)
        self.valsea_limiter = RateLimiter(config.valsea_limits)
        self.valence_keys = frozenset(config.valence_keys)
        self.valsea_keys = frozenset(config.valsea_keys)
        self._owned_dir: tempfile.TemporaryDirectory[str] | None = None  # removed at exit
        if config.data_dir is None:
            self._owned_dir = tempfile.TemporaryDirectory(prefix="valence-emulator-")
            self.data_dir = Path(self._owned_dir.name)
        else:
            self.data_dir = Path(config.data_dir)
        (self.data_dir / "uploads").mkdir(parents=True, exist_ok=True)
        (self.data_dir / "incoming").mkdir(parents=True, exist_ok=True)
        self.local_parts = LocalParts(self.data_dir / "uploads")
        self.signer = PartSigner(config.url_secret, config.url_expiry_s)
        self.s3 = (
            S3Parts(config.s3_endpoint, config.s3_bucket, config.url_expiry_s, config.s3_public_endpoint)
            if config.s3_endpoint
            else None
        )

        self._lock = threading.Lock()
        self._requests: dict[str, AsyncRequest] = {}
        self._uploads: dict[str, str] = {}  # upload_id -> request_id
        self._jobs: dict[str, ValseaJob] = {}
        self._ledger: list[dict[str, Any]] = []
        self._log: deque[dict[str, Any]] = deque(maxlen=2000)
        self._log_seq = 0
        self._credits = config.valsea_credits
        self._last_sweep = 0.0

    def incoming_path(self) -> Path:
        """A fresh file name for a body being received (Valsea submissions)."""
        return self.data_dir / "incoming" / uuid.uuid4().hex

    # ------------------------------------------------------------------ housekeeping

    def sweep(self) -> None:
        """Forget (and delete the files of) expired requests and jobs; at most once a second."""
        real_now = time.monotonic()
        if real_now - self._last_sweep < 1.0:
            return
        self._last_sweep = real_now
        now, retention = self.clock.now(), self.config.retention_s
        with self._lock:
            gone = [r for r in self._requests.values() if now >= r.expires_at(retention)]
            for r in gone:
                del self._requests[r.request_id]
                self._uploads.pop(r.upload_id, None)
            for job_id in [j.job_id for j in self._jobs.values() if now >= j.done_at + retention]:
                del self._jobs[job_id]
        for r in gone:
            self.local_parts.remove(r.request_id)

    def reset(self) -> None:
        """Forget everything and restore the configured faults and credits."""
        with self._lock:
            ids = list(self._requests)
            self._requests.clear()
            self._uploads.clear()
            self._jobs.clear()
            self._ledger.clear()
            self._log.clear()
            self._credits = self.config.valsea_credits
        for request_id in ids:
            self.local_parts.remove(request_id)
        self.faults.reset(self.config.faults)
        self.valence_limiter.reset()
        self.valsea_limiter.reset()

    # ------------------------------------------------------------------ ledger & log

    def bill(self, kind: str, owner: str, *, sha256: str, duration_s: float, size: int, **extra: Any) -> None:
        entry = {
            "kind": kind,
            "owner": owner,
            "sha256": sha256,
            "duration_s": round(duration_s, 3),
            "bytes": size,
            "at": time.time(),
            **extra,
        }
        with self._lock:
            entry["seq"] = len(self._ledger) + 1
            self._ledger.append(entry)

    def ledger(self) -> dict[str, Any]:
        with self._lock:
            entries = [dict(e) for e in self._ledger]
            credits = self._credits
        by_sha: dict[str, Counter[str]] = {}
        for e in entries:
            by_sha.setdefault(e["sha256"], Counter())[e["kind"]] += 1
        return {
            "entries": entries,
            "by_sha256": {sha: {**counts, "total": sum(counts.values())} for sha, counts in by_sha.items()},
            "valsea_credits_remaining": credits,
        }

    def log_request(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._log_seq += 1
            entry["seq"] = self._log_seq
            self._log.append(entry)

    def request_log(self, limit: int | None = None) -> list[dict[str, Any]]:
        with self._lock:
            entries = list(self._log)
        return entries[-limit:] if limit else entries

    @property
    def credits(self) -> int:
        return self._credits

    def set_credits(self, credits: int) -> None:
        if credits < 0:
            raise ValueError("credits must not be negative")
        with self._lock:
            self._credits = credits

    def set_faults(self, spec: FaultSpec) -> None:
        self.faults.reset(spec)

    # ------------------------------------------------------------------ Valence async

    def initiate(
        self, owner: str, file_name: str, part_count: int, model: str | None, base_url: str
    ) -> dict[str, Any]:
        if model is not None and model not in VALENCE_MODELS:
            raise bad_request(
                f"unknown model {model!r}; use one of {sorted(VALENCE_MODELS)}", "INVALID_MODEL"
            )
        if not file_name:
            raise bad_request("file_name is required", "INVALID_REQUEST")
        if not 1 <= part_count <= MAX_PART_NUMBER:
            raise bad_request(f"part_count must be between 1 and {MAX_PART_NUMBER}", "INVALID_REQUEST")
        request_id = str(uuid.uuid4())
        s3_key = None
        if self.s3 is not None:
            s3_key = f"uploads/{request_id}/{Path(file_name).name or 'audio'}"
            upload_id = self.s3.create(s3_key)
            urls = [self.s3.url(s3_key, upload_id, n) for n in range(1, part_count + 1)]
        else:
            upload_id = uuid.uuid4().hex
            urls = [self.signer.url(base_url, upload_id, n) for n in range(1, part_count + 1)]
            self.local_parts.folder(request_id).mkdir(parents=True, exist_ok=True)
        req = AsyncRequest(
            request_id=request_id,
            upload_id=upload_id,
            owner=owner,
            model=model,
            file_name=file_name,
            part_count=part_count,
            created_at=self.clock.now(),
            s3_key=s3_key,
        )
        with self._lock:
            self._requests[request_id] = req
            self._uploads[upload_id] = request_id
        log.info("initiated %s (%d parts, %s)", request_id, part_count, "s3" if s3_key else "local")
        return {
            "upload_id": upload_id,
            "request_id": request_id,
            "presigned_urls": [{"part_number": n, "url": u} for n, u in enumerate(urls, start=1)],
        }

    def upload_for_part(self, upload_id: str) -> AsyncRequest:
        """The request a local part PUT belongs to; 404 NoSuchUpload unless it takes parts."""
        with self._lock:
            request_id = self._uploads.get(upload_id)
            req = self._requests.get(request_id) if request_id else None
        if req is None or req.completed_parts is not None or req.s3_key is not None:
            raise ApiError(
                404, {"Code": "NoSuchUpload", "Message": "The specified upload does not exist."}, xml=True
            )
        return req

    def record_part(self, req: AsyncRequest, part_number: int, info: PartInfo) -> None:
        with self._lock:
            req.parts[part_number] = info

    def _request(self, owner: str, request_id: str) -> AsyncRequest:
        self.sweep()
        with self._lock:
            req = self._requests.get(request_id)
        if req is None or req.owner != owner or self.clock.now() >= req.expires_at(self.config.retention_s):
            raise ApiError(404, {"error": f"request {request_id} not found", "error_code": "NOT_FOUND"})
        return req

    def complete(
        self, owner: str, request_id: str, upload_id: str, parts: list[tuple[int, str]]
    ) -> dict[str, Any]:
        """Check the parts, assemble, decode and validate the audio, and start processing."""
        req = self._request(owner, request_id)
        if upload_id != req.upload_id:
            raise bad_request("upload_id does not belong to request_id", "INVALID_UPLOAD")
        answer = {"request_id": request_id, "status": "upload_completed"}
        with req.lock:
            if req.completed_parts is not None:
                same = [(n, normalise_etag(e)) for n, e in parts] == [
                    (n, normalise_etag(e)) for n, e in req.completed_parts
                ]
                if not same:
                    raise bad_request("upload already completed with other parts", "UPLOAD_ALREADY_COMPLETED")
                if req.rejection is not None:
                    raise ApiError(400, req.rejection)
                return answer
            infos = self._check_parts(req, parts)
            try:
                segments, duration, sha, size = self._assemble_and_analyse(req, parts, infos)
            except ApiError as exc:
                if exc.status == 400 and exc.body.get("error_code") in {
                    "AUDIO_TOO_SHORT",
                    "FILE_TOO_LARGE",
                    "INVALID_AUDIO",
                }:
                    req.rejection = exc.body
                    req.completed_parts = list(parts)
                    req.pickup_at = self.clock.now()
                    self._discard_upload(req)
                raise
            now = self.clock.now()
            interval = self.config.pickup_interval_s
            req.pickup_at = (math.floor(now / interval) + 1) * interval if interval > 0 else now
            req.done_at = (
                req.pickup_at
                + self.config.processing_overhead_s
                + self.config.processing_s_per_audio_hour * duration / 3600.0
            )
            req.fails = self.faults.job_fails("valence")
            req.segments, req.duration_s, req.sha256, req.size = segments, duration, sha, size
            req.completed_parts = list(parts)
        self.bill(
            "valence_async",
            owner,
            sha256=sha,
            duration_s=duration,
            size=size,
            request_id=request_id,
            model=req.model,
            analysed_with=req.model or DEFAULT_VALENCE_MODEL,
            file_name=req.file_name,
        )
        log.info("completed upload %s: %.1f s of audio, %d segments", request_id, duration, len(segments))
        return answer

    def _check_parts(self, req: AsyncRequest, parts: list[tuple[int, str]]) -> dict[int, PartInfo]:
        if not parts:
            raise bad_request("parts must not be empty", "INVALID_PART")
        numbers = [n for n, _ in parts]
        if numbers != sorted(set(numbers)):
            raise bad_request("parts must be in ascending PartNumber order, each once", "INVALID_PART_ORDER")
        if self.s3 is not None and req.s3_key is not None:
            uploaded = self.s3.list_parts(req.s3_key, req.upload_id)
        else:
            with self._lock:
                uploaded = dict(req.parts)
        for n, etag in parts:
            info = uploaded.get(n)
            if info is None:
                raise bad_request(f"part {n} was not uploaded", "INVALID_PART", part_number=n)
            if normalise_etag(info.etag) != normalise_etag(etag):
                raise bad_request(
                    f"ETag of part {n} does not match the uploaded part", "INVALID_PART", part_number=n
                )
        for n, _ in parts[:-1]:
            if uploaded[n].size < self.config.min_part_size:
                raise bad_request(
                    f"part {n} is smaller than the minimum part size ({self.config.min_part_size} bytes)",
                    "ENTITY_TOO_SMALL",
                    part_number=n,
                )
        return {n: uploaded[n] for n, _ in parts}

    def _assemble_and_analyse(
        self, req: AsyncRequest, parts: list[tuple[int, str]], infos: dict[int, PartInfo]
    ) -> tuple[list[EmotionSegment], float, str, int]:
        total = sum(i.size for i in infos.values())
        if total > ASYNC_MAX_BYTES:
            first = self.local_parts.part_path(req.request_id, parts[0][0]) if req.s3_key is None else None
            raise bad_request(
                f"file is {total / MIB:.1f} MB; the maximum is {ASYNC_MAX_BYTES // MIB} MB",
                "FILE_TOO_LARGE",
                max_size_mb=ASYNC_MAX_BYTES // MIB,
                actual_size_mb=round(total / MIB, 3),
                actual_duration_seconds=audio.probe_duration(str(first)) if first else None,
            )
        if req.s3_key is not None and self.s3 is not None:
            try:
                self.s3.complete(req.s3_key, req.upload_id, parts)
            except Exception as exc:
                code = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
                raise bad_request(f"S3 refused to complete the upload ({code})", "INVALID_PART") from exc
            folder = self.local_parts.folder(req.request_id)
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / "object"
            sha, size = self.s3.download(req.s3_key, path)
        else:
            path, sha, size = self.local_parts.assemble(req.request_id, [n for n, _ in parts])
        try:
            analysis = audio.analyse_file(str(path))
        except audio.AudioDecodeError as exc:
            raise bad_request(f"the upload is not decodable audio ({exc})", "INVALID_AUDIO") from exc
        finally:
            self.local_parts.remove(req.request_id)
        if analysis.duration_s < ASYNC_MIN_S:
            raise bad_request(
                f"audio is {analysis.duration_s:.2f} s; the minimum is {ASYNC_MIN_S:g} s",
                "AUDIO_TOO_SHORT",
                min_duration_seconds=ASYNC_MIN_S,
                actual_duration_seconds=round(analysis.duration_s, 3),
            )
        # No model asked for: the API's default analyses it (what the real service does).
        model = req.model or DEFAULT_VALENCE_MODEL
        return audio.timeline(analysis, model), analysis.duration_s, sha, size

    def _discard_upload(self, req: AsyncRequest) -> None:
        self.local_parts.remove(req.request_id)
        if self.s3 is not None and req.s3_key is not None:
            try:
                self.s3.abort(req.s3_key, req.upload_id)
            except Exception as exc:  # noqa: BLE001 - already completed or gone: nothing to abort
                log.debug("abort of %s skipped: %s", req.request_id, exc)

    def async_status(self, owner: str, request_id: str, comprehensive: bool) -> dict[str, Any]:
        req = self._request(owner, request_id)
        status = req.status(self.clock.now())
        body: dict[str, Any] = {"request_id": request_id, "status": status}
        if status == "completed":
            body["emotions"] = [self._wire_segment(s, comprehensive) for s in req.segments]
        elif status == "failed":
            body["error"] = (req.rejection or {}).get("error", "processing failed")
            if req.rejection and req.rejection.get("error_code"):
                body["error_code"] = req.rejection["error_code"]
        return body

    def _wire_segment(self, seg: EmotionSegment, comprehensive: bool) -> dict[str, Any]:
        if self.config.timeline_shape == "002":
            entry = seg.to_wire_002()
            if comprehensive and seg.all_predictions is not None:
                entry["all_predictions"] = seg.all_predictions
            return entry
        return seg.model_copy(
            update={"all_predictions": seg.all_predictions if comprehensive else None}
        ).to_wire_000()

    # ------------------------------------------------------------------ Valence discrete

    def record_discrete(self, owner: str, sha256: str, duration_s: float, size: int, model: str) -> None:
        self.bill("valence_discrete", owner, sha256=sha256, duration_s=duration_s, size=size, model=model)

    # ------------------------------------------------------------------ Valsea

    def submit_prosody(
        self,
        owner: str,
        path: Path,
        *,
        granularity: str,
        response_format: str,
        language: str | None,
        sha256: str,
        size: int,
    ) -> dict[str, Any]:
        """Decode the received file, charge credits, create the job. Deletes `path`."""
        try:
            try:
                analysis = audio.analyse_file(str(path))
            except audio.AudioDecodeError as exc:
                raise ApiError(400, {"error": f"file is not decodable audio ({exc})"}) from exc
            if analysis.duration_s <= 0:
                raise ApiError(400, {"error": "file holds no audio"})
            scores, utterances = audio.prosody(analysis, granularity)
        finally:
            path.unlink(missing_ok=True)
        cost = max(1, math.ceil(analysis.duration_s / 60.0))
        with self._lock:
            if self._credits < cost:
                raise ApiError(
                    402,
                    {
                        "error": "insufficient credits",
                        "required_credits": cost,
                        "available_credits": self._credits,
                    },
                )
            self._credits -= cost
        now = self.clock.now()
        cfg = self.config
        started = now + cfg.valsea_queue_s
        job = ValseaJob(
            job_id=str(uuid.uuid4()),
            owner=owner,
            created_at=now,
            started_at=started,
            done_at=started
            + cfg.valsea_overhead_s
            + cfg.valsea_processing_s_per_audio_s * analysis.duration_s,
            fails=self.faults.job_fails("valsea"),
            response_format=response_format,
            granularity=granularity,
            language=language,
            scores=scores,
            utterances=utterances,
            duration_s=analysis.duration_s,
            sha256=sha256,
            credits=cost,
        )
        with self._lock:
            self._jobs[job.job_id] = job
        self.bill(
            "valsea_job",
            owner,
            sha256=sha256,
            duration_s=analysis.duration_s,
            size=size,
            job_id=job.job_id,
            credits=cost,
        )
        log.info("valsea job %s queued: %.1f s of audio, %d credits", job.job_id, analysis.duration_s, cost)
        return {"job_id": job.job_id, "status": "queued"}

    def _job(self, owner: str, job_id: str) -> ValseaJob:
        self.sweep()
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None or job.owner != owner or self.clock.now() >= job.done_at + self.config.retention_s:
            raise ApiError(404, {"error": f"job {job_id} not found or expired"})
        return job

    def prosody_status(self, owner: str, job_id: str) -> dict[str, Any]:
        job = self._job(owner, job_id)
        status = job.status(self.clock.now())
        body: dict[str, Any] = {"job_id": job_id, "status": status}
        if status == "failed":
            body["error"] = "processing failed"
        return body

    def prosody_result(self, owner: str, job_id: str) -> dict[str, Any]:
        job = self._job(owner, job_id)
        status = job.status(self.clock.now())
        if status != "completed":
            raise ApiError(
                409, {"error": f"job is {status}, not completed", "job_id": job_id, "status": status}
            )
        body: dict[str, Any] = {"job_id": job_id, "status": "completed", "emotions": job.scores.model_dump()}
        if job.response_format == "verbose_json":
            body["raw_predictions"] = [u.to_wire() for u in job.utterances]
        return body
