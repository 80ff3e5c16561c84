"""The upload event that the `on-upload` deployment reacts to.

Whatever notices a new object (an S3 event notification forwarded by a small function, a
webhook, or `valence-pipeline notify s3://bucket/key`) emits this event; the deployment's
trigger in prefect.yaml turns it into a `process_recordings` run for that object.
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

UPLOAD_EVENT = "valence-pipeline.recording.uploaded"


class UploadNotice(BaseModel):
    """One uploaded object: the event's resource is its s3:// URI."""

    uri: str
    version_id: str | None = None

    def resource(self) -> dict[str, str]:
        return {"prefect.resource.id": self.uri, "prefect.resource.name": self.uri.rsplit("/", 1)[-1]}

    def payload(self) -> dict[str, str]:
        return {"version_id": self.version_id} if self.version_id else {}


def emit_upload_events(notices: list[UploadNotice]) -> list[str]:
    """Send the events and wait until the server has them (a short-lived CLI process must not
    exit with events still queued, which `prefect.events.emit_event` could do); returns event ids."""
    return asyncio.run(_emit(notices))


async def _emit(notices: list[UploadNotice]) -> list[str]:
    from prefect.events import Event
    from prefect.events.clients import get_events_client

    events = [Event(event=UPLOAD_EVENT, resource=n.resource(), payload=n.payload()) for n in notices]
    async with get_events_client() as client:
        for event in events:
            await client.emit(event)
    return [str(e.id) for e in events]
