"""The upload event that the `on-upload` deployment reacts to.

The webhook and the store watcher (`valence-pipeline events ...`) and `valence-pipeline notify`
emit it, one event per batch of uploaded objects. Its resource is the (first) object version,
`s3://bucket/key?versionId=V`, with the bucket, key, version id and ETag as labels; every object
of the batch is a related resource (role `recording`) and the payload lists their URIs, which the
trigger in prefect.yaml passes to `process_recordings(uris=...)` as they are.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

from notifications.ledger import UploadBatch
from notifications.messages import ObjectNotice
from valence_pipeline.s3 import object_uri, parse_object_uri

if TYPE_CHECKING:
    from prefect.events import Event

UPLOAD_EVENT = "valence-pipeline.recording.uploaded"


def _uri(obj: ObjectNotice) -> str:
    return object_uri(obj.bucket, obj.key, obj.version_id)


def upload_event(batch: UploadBatch) -> Event:
    """The event for one batch; its id is the batch id, so sending a batch again is a
    duplicate the event server recognises, not a second run."""
    from prefect.events import Event, RelatedResource, Resource

    first = batch.objects[0]
    labels = {
        "prefect.resource.id": _uri(first),
        "prefect.resource.name": first.key.rsplit("/", 1)[-1],
        "s3.bucket": first.bucket,
        "s3.key": first.key,
        "valence-pipeline.batch-size": str(len(batch.objects)),
    }
    if first.version_id:
        labels["s3.version-id"] = first.version_id
    if first.etag:
        labels["s3.etag"] = first.etag
    related = [
        RelatedResource({"prefect.resource.id": _uri(o), "prefect.resource.role": "recording"})
        for o in batch.objects
    ]
    return Event(
        id=uuid.UUID(batch.batch_id),
        event=UPLOAD_EVENT,
        resource=Resource(labels),
        related=related,
        payload={"uris": [_uri(o) for o in batch.objects], "batch_id": batch.batch_id},
    )


def batch_of_uris(uris: Sequence[str], version_id: str | None = None) -> UploadBatch:
    """A one-off batch for `valence-pipeline notify` (URIs as given, optional version)."""
    objects = []
    for uri in uris:
        bucket, key, named = parse_object_uri(uri)
        objects.append(ObjectNotice(bucket=bucket, key=key, version_id=version_id or named, source="notify"))
    return UploadBatch(str(uuid.uuid4()), tuple(objects))


def emit_upload_events(batches: Sequence[UploadBatch]) -> list[str]:
    """Send the events and wait until the server has them (a short-lived CLI process must not
    exit with events still queued, which `prefect.events.emit_event` could do); returns event ids."""
    return asyncio.run(_emit(batches))


async def _emit(batches: Sequence[UploadBatch]) -> list[str]:
    from prefect.events.clients import get_events_client

    events = [upload_event(b) for b in batches]
    async with get_events_client() as client:
        for event in events:
            await client.emit(event)
    return [str(e.id) for e in events]
