"""The upload event that the `on-upload` deployment reacts to.

Whatever notices a new object (an S3 event notification forwarded by a small function, a
webhook, or `valence-pipeline notify s3://bucket/key`) emits this event; the deployment's
trigger in prefect.yaml turns it into a `process_recordings` run for that object.
"""

from __future__ import annotations

from typing import Any

UPLOAD_EVENT = "valence-pipeline.recording.uploaded"


def emit_upload_event(uri: str, version_id: str | None = None) -> Any:
    """Emit `valence-pipeline.recording.uploaded` for `uri` (resource id = the s3:// URI)."""
    from prefect.events import emit_event

    resource = {"prefect.resource.id": uri, "prefect.resource.name": uri.rsplit("/", 1)[-1]}
    payload = {"version_id": version_id} if version_id else {}
    return emit_event(event=UPLOAD_EVENT, resource=resource, payload=payload)
