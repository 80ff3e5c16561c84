"""Steps 3 and 4: prepare each recording for each provider and submit it, paying at most once.

The provider's id is stored the moment we have it (for Valence async: as soon as `initiate`
answers, before any part goes up). On a retry or a re-run the stored id is asked about first:
an upload the provider already has is never sent again.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.runtime import task_run as task_run_ctx

from valence_client.errors import AuthenticationError, InsufficientCreditsError, ValenceSDKException
from valence_pipeline.preflight import Preflight
from valence_pipeline.runtime import Runtime, runtime
from valence_pipeline.settings import Settings
from valence_pipeline.sources import open_payload
from valence_pipeline.work import JobHandle, Mode, Results, WorkItem

log = logging.getLogger(__name__)

SUBMIT_RETRIES = 2
# Provider states that mean "the provider has the audio": never upload it again.
VALENCE_HAS_AUDIO = {"upload_completed", "processing", "completed"}
VALSEA_HAS_AUDIO = {"queued", "in_progress", "completed"}


def plan_work(verdict: Preflight, recording_id: int, settings: Settings) -> list[WorkItem]:
    """The provider calls one accepted recording needs: per provider, per channel when split."""
    assert verdict.info is not None and verdict.sha256 is not None and verdict.route is not None
    info = verdict.info
    channels: list[int | None] = (
        list(range(info.channels)) if settings.channel_mode == "split" and info.channels > 1 else [None]
    )
    items: list[WorkItem] = []
    for channel in channels:
        for provider in settings.providers:
            mode: Mode = verdict.route if provider == "valence" else "prosody"
            model = settings.valence_model if provider == "valence" else "valsea-prosody"
            items.append(
                WorkItem(recording_id, verdict.obj, info, verdict.sha256, provider, mode, model, channel)
            )
    return items


def open_source(rt: Runtime, item: WorkItem) -> tuple[Any, int, str]:
    """(readable stream, exact size, file name) of what this provider gets (see `sources`)."""
    payload = open_payload(rt.s3, item.obj, item.info, item.provider, item.channel, rt.settings)
    return payload.stream, payload.size, payload.name


def _ids() -> dict[str, str | None]:
    return {"flow_run_id": flow_run.get_id(), "task_run_id": task_run_ctx.get_id()}


def _resume(rt: Runtime, item: WorkItem, job: Any) -> JobHandle | None:
    """A handle for a job the provider already has, or None if it must be submitted anew."""
    try:
        if item.provider == "valence":
            status: str = rt.valence.asynch.status(job.external_id).status
            has_audio = status in VALENCE_HAS_AUDIO
        else:
            status = rt.valsea.status(job.external_id).status
            has_audio = status in VALSEA_HAS_AUDIO
    except ValenceSDKException as exc:
        if exc.status == 404:
            return None  # expired or never completed: submit again
        raise
    if not has_audio:
        return None
    log.info("resuming %s: provider already has it as %s (%s)", item.label, job.external_id, status)
    return JobHandle(
        item=item, job_id=job.id, external_id=job.external_id, state="submitted", submitted_at=time.time()
    )


def submit_item(rt: Runtime, item: WorkItem, *, force_new: bool = False) -> JobHandle:
    """Submit one work item (or resume its earlier submission); raises provider errors."""
    store = rt.store
    if not force_new and item.mode != "discrete":
        previous = store.latest_job(item)
        if previous is not None and not previous.external_id.startswith("unsubmitted:"):
            if previous.status == "completed":
                return JobHandle(
                    item=item, job_id=previous.id, external_id=previous.external_id, state="skipped"
                )
            resumed = _resume(rt, item, previous)
            if resumed is not None:
                return resumed
    stream, size, name = open_source(rt, item)
    try:
        if item.mode == "discrete":
            return _submit_discrete(rt, item, stream)
        if item.mode == "async":
            return _submit_async(rt, item, stream, size, name)
        return _submit_prosody(rt, item, stream, size, name)
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()


def _submit_discrete(rt: Runtime, item: WorkItem, stream: Any) -> JobHandle:
    result = rt.valence.discrete.emotions(file=stream, model=item.model)
    # The discrete API has no request id: the natural key is content + model + channel.
    external_id = (
        f"discrete:{item.sha256[:32]}:{item.model}:{'mix' if item.channel is None else item.channel}"
    )
    job_id = rt.store.record_job(item, external_id=external_id, status="completed", **_ids())
    from valence_client.models import EmotionSegment

    segment = EmotionSegment(
        start_s=0.0,
        end_s=item.info.duration_s,
        emotion=result.main_emotion,
        confidence=result.confidence,
        all_predictions=result.all_predictions,
    )
    return JobHandle(
        item=item, job_id=job_id, external_id=external_id, state="completed", results=Results([segment])
    )


def _submit_async(rt: Runtime, item: WorkItem, stream: Any, size: int, name: str) -> JobHandle:
    job_ids: list[int] = []

    def persist_request_id(request_id: str) -> None:
        # Before any part goes up: a crash from here on can be resumed from this row.
        job_ids.append(rt.store.record_job(item, external_id=request_id, status="uploading", **_ids()))

    request_id = rt.valence.asynch.upload(stream, size=size, file_name=name, on_initiated=persist_request_id)
    rt.store.update_job(job_ids[0], status="submitted")
    return JobHandle(
        item=item, job_id=job_ids[0], external_id=request_id, state="submitted", submitted_at=time.time()
    )


def _submit_prosody(rt: Runtime, item: WorkItem, stream: Any, size: int, name: str) -> JobHandle:
    settings = rt.settings
    job = rt.valsea.submit(
        stream,
        file_name=name,
        size=size,
        language=settings.valsea_language,
        granularity=settings.valsea_granularity,
        response_format=settings.valsea_response_format,
    )
    job_id = rt.store.record_job(item, external_id=job.job_id, status="submitted", **_ids())
    return JobHandle(
        item=item, job_id=job_id, external_id=job.job_id, state="submitted", submitted_at=time.time()
    )


def _retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retries only what may succeed later (the transport already retried seconds)."""
    try:
        state.result()
    except ValenceSDKException as exc:
        return exc.retryable
    except Exception:  # noqa: BLE001 - S3 or network trouble outside our client: worth a retry
        return True
    return False


def failed_handle(rt: Runtime, item: WorkItem, code: str, message: str) -> JobHandle:
    job_id = rt.store.record_failure(item, error_code=code, error_message=message, **_ids())
    return JobHandle(
        item=item, job_id=job_id, external_id=None, state="failed", error_code=code, error_message=message
    )


@task(
    name="submit",
    task_run_name="{item.mode} {item.obj.uri}",
    retries=SUBMIT_RETRIES,
    retry_delay_seconds=[10, 60],
    retry_jitter_factor=0.5,
    retry_condition_fn=_retry_transient,
    cache_policy=NO_CACHE,
)
def submit(item: WorkItem) -> JobHandle:
    """Submit one item; bad audio or a spent budget becomes a failed handle, not a crash."""
    rt = runtime()
    if item.provider == "valsea" and rt.flags.valsea_out_of_credits:
        return failed_handle(rt, item, "insufficient_credits", "Valsea credits ran out earlier in this run")
    try:
        return submit_item(rt, item)
    except AuthenticationError:
        raise  # a wrong key fails the whole run, at once
    except InsufficientCreditsError as exc:
        rt.flags.valsea_out_of_credits = True
        rt.flags.notes.append(
            "Valsea answered 402 (insufficient credits): no new Valsea jobs for the rest of this run"
        )
        return failed_handle(rt, item, "insufficient_credits", str(exc))
    except ValenceSDKException as exc:
        last_try = (task_run_ctx.run_count or 1) > SUBMIT_RETRIES
        if exc.retryable and not last_try:
            raise
        return failed_handle(rt, item, exc.error_code or type(exc).__name__, str(exc))
