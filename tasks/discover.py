"""Step 1: find the object versions that still need work."""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from prefect import task
from prefect.cache_policies import NO_CACHE

from valence_client.redaction import failures_redacted
from valence_pipeline.runtime import runtime
from valence_pipeline.s3 import (
    LIST_PAGE_SIZE,
    ObjectVersion,
    head_version,
    list_latest_versions,
    parse_object_uri,
    parse_s3_uri,
)

log = logging.getLogger(__name__)


def is_audio(key: str, suffixes: list[str]) -> bool:
    return key.lower().endswith(tuple(s.lower() for s in suffixes))


@dataclass(frozen=True)
class Registered:
    """What a run took on: its recordings' ids, oldest first (the listing itself is not kept:
    the database has it, and a night of thousands must not hold it for the whole run)."""

    ids: list[int]
    without_event: int | None = None
    """How many of them no upload event announced (the nightly sweep counts them)."""


@task(
    name="discover",
    task_run_name="discover {sources}",
    retries=3,
    retry_delay_seconds=[2, 10, 30],
    cache_policy=NO_CACHE,
)
@failures_redacted
def discover(
    sources: list[str],
    run_id: str,
    since: datetime | None = None,
    until: datetime | None = None,
    max_files: int | None = None,
    count_unannounced: bool = False,
) -> Registered:
    """List every prefix, keep audio modified in [since, until) that the store has not
    finished, register it for `run_id` and return the ids, oldest first.

    A page at a time: each listed page is checked against the store (one query) and
    registered (one upsert) before the next is read, so the process holds one page, never the
    night's listing (with `max_files`, the oldest `max_files` so far). Registering again is an
    upsert, so a retry is harmless. Oldest first, so a `max_files` or audio-hours budget works
    through a backlog in arrival order: the database orders what was registered.
    """
    rt = runtime()  # its store is opened when the first page is listed
    listed = registered = 0
    without_event = 0 if count_unannounced else None

    def unfinished() -> Iterator[list[ObjectVersion]]:
        nonlocal listed
        for page in _pages(sources, since, until):
            listed += len(page)
            yield rt.store.unfinished(page)

    def take(objects: list[ObjectVersion]) -> None:
        nonlocal registered, without_event
        rt.store.register(objects, run_id)
        registered += len(objects)
        if without_event is not None:
            without_event += _unannounced(objects)

    if max_files is None:
        for pending in unfinished():
            take(pending)
    else:  # the oldest max_files, kept as the pages go by (a bounded heap)
        take(
            heapq.nsmallest(
                max_files,
                (obj for pending in unfinished() for obj in pending),
                key=lambda o: (o.last_modified, o.uri),
            )
        )
    log.info("discovered %d audio objects, %d not finished yet", listed, registered)
    return Registered(rt.store.taken_by(run_id), without_event)


def _pages(
    sources: list[str], since: datetime | None, until: datetime | None
) -> Iterator[list[ObjectVersion]]:
    """The audio objects modified in [since, until) under `sources`, a listing page at a time."""
    rt = runtime()
    page: list[ObjectVersion] = []
    for source in sources:
        bucket, prefix = parse_s3_uri(source)
        for obj in list_latest_versions(rt.s3, bucket, prefix):
            if not is_audio(obj.key, rt.settings.audio_suffixes):
                continue
            if (since is not None and obj.last_modified < since) or (
                until is not None and obj.last_modified >= until
            ):
                continue
            page.append(obj)
            if len(page) >= LIST_PAGE_SIZE:
                yield page
                page = []
    if page:
        yield page


def _resolve_name() -> str:
    """`resolve s3://b/k?versionId=V`, or `resolve 50 objects` for a batch (not 50 URIs)."""
    from prefect.runtime import task_run

    uris = list(task_run.parameters.get("uris") or [])
    return f"resolve {uris[0]}" if len(uris) == 1 else f"resolve {len(uris)} objects"


@task(
    name="register",
    task_run_name="register {n} objects",
    retries=3,
    retry_delay_seconds=[2, 10, 30],
    cache_policy=NO_CACHE,
)
@failures_redacted
def register(objects: list[ObjectVersion], n: int, run_id: str) -> Registered:
    """Put these versions in the database (one bulk upsert) and take the unfinished ones on
    for this run: from here on the database, not this process, knows where each one is."""
    return Registered(runtime().store.register(objects, run_id))


@task(
    name="resolve",
    task_run_name=_resolve_name,
    retries=3,
    retry_delay_seconds=[2, 10, 30],
    cache_policy=NO_CACHE,
)
@failures_redacted
def resolve(uris: list[str]) -> list[ObjectVersion]:
    """Each given object at the version its URI names (`s3://b/k?versionId=V`, what an upload
    event carries), or at its current version (`s3://b/k`)."""
    rt = runtime()
    out = []
    for uri in uris:
        bucket, key, version_id = parse_object_uri(uri)
        out.append(head_version(rt.s3, bucket, key, version_id))
    return out


def _unannounced(objects: list[ObjectVersion]) -> int:
    """How many of the night's new files no upload event announced (the nightly run is the
    reconciliation sweep: it processes them all the same, and says how many)."""
    from notifications.ledger import count_unannounced

    with runtime().store.store.session_scope() as session:
        return count_unannounced(session, objects)
