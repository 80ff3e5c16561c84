"""The bodies object stores POST when an object is created, parsed into `ObjectNotice`s.

Shapes accepted (each as its sender documents it):

- S3 event notifications, `{"Records": [...]}`: AWS S3 (keys URL-encoded, `+` for a space),
  MinIO (the same, `eventName` prefixed `s3:`, plus top-level `EventName`/`Key`) and Ceph RGW
  (`eventSource` `ceph:s3`, keys not encoded);
- SNS: the `Notification` envelope whose `Message` is one of the above as a string, and the
  `SubscriptionConfirmation` handshake (its `SubscribeURL` must be fetched once);
- EventBridge: `{"detail-type": "Object Created", "source": "aws.s3", "detail": {...}}` (keys
  not encoded);
- the `s3:TestEvent` S3 sends when a notification is configured (nothing to do).

Only `ObjectCreated:*` records become notices; other events (removals, restores) are ignored.
"""

from __future__ import annotations

import json
from typing import Any, Literal
from urllib.parse import unquote_plus

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from results_store.models import normalise_etag, object_version


class NotificationError(ValueError):
    """The body is not a notification this webhook understands (answered with 400)."""


class ObjectNotice(BaseModel):
    """One created object version, as a notification named it."""

    model_config = ConfigDict(frozen=True)

    bucket: str
    key: str
    version_id: str | None = None
    etag: str | None = None
    size: int | None = None
    source: str

    @property
    def object_version(self) -> str:
        """The recordings table's version key: the version id, else `etag:<etag>`."""
        return object_version(self.version_id, self.etag or "")


class Confirmation(BaseModel):
    """An SNS subscription handshake: GET `subscribe_url` once to start receiving."""

    topic_arn: str
    subscribe_url: str


class Parsed(BaseModel):
    notices: list[ObjectNotice] = Field(default_factory=list)
    confirmation: Confirmation | None = None
    ignored: int = 0
    """Records that are not object creations (removals, test events)."""


# --------------------------------------------------------------------------- S3 Records


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class _Bucket(_Lenient):
    name: str


class _Object(_Lenient):
    key: str
    size: int | None = None
    etag: str | None = Field(default=None, alias="eTag")
    version_id: str | None = Field(default=None, alias="versionId")


class _S3Entity(_Lenient):
    bucket: _Bucket
    object: _Object


class _Record(_Lenient):
    event_name: str = Field(alias="eventName")
    event_source: str = Field(default="aws:s3", alias="eventSource")
    s3: _S3Entity


class _Records(_Lenient):
    records: list[_Record] = Field(alias="Records")


def _is_created(event_name: str) -> bool:
    # AWS and Ceph: "ObjectCreated:Put"; MinIO (and older Ceph): "s3:ObjectCreated:Put".
    return event_name.removeprefix("s3:").startswith("ObjectCreated:")


def _from_records(body: _Records, source: str) -> Parsed:
    parsed = Parsed()
    for record in body.records:
        if not _is_created(record.event_name):
            parsed.ignored += 1
            continue
        obj = record.s3.object
        ceph = record.event_source.startswith("ceph")
        # AWS and MinIO URL-encode the key in form style; Ceph sends it as stored.
        key = obj.key if ceph else unquote_plus(obj.key)
        parsed.notices.append(
            _notice(
                record.s3.bucket.name, key, obj.version_id, obj.etag, obj.size, "ceph" if ceph else source
            )
        )
    return parsed


def _notice(
    bucket: str, key: str, version_id: str | None, etag: str | None, size: int | None, source: str
) -> ObjectNotice:
    if not key or key.endswith("/"):
        raise NotificationError(f"not an object key: {key!r}")
    if not version_id and not etag:
        raise NotificationError(f"s3://{bucket}/{key}: neither a version id nor an ETag")
    return ObjectNotice(
        bucket=bucket,
        key=key,
        version_id=version_id or None,
        etag=normalise_etag(etag) if etag else None,
        size=size,
        source=source,
    )


# --------------------------------------------------------------------------- EventBridge


class _EBObject(_Lenient):
    key: str
    size: int | None = None
    etag: str | None = None
    version_id: str | None = Field(default=None, alias="version-id")


class _EBDetail(_Lenient):
    bucket: _Bucket
    object: _EBObject


class _EventBridge(_Lenient):
    detail_type: str = Field(alias="detail-type")
    source: str
    detail: _EBDetail


def _from_eventbridge(body: _EventBridge) -> Parsed:
    if body.detail_type != "Object Created":
        return Parsed(ignored=1)
    obj = body.detail.object
    return Parsed(
        notices=[_notice(body.detail.bucket.name, obj.key, obj.version_id, obj.etag, obj.size, "eventbridge")]
    )


# --------------------------------------------------------------------------- SNS


class _SNS(_Lenient):
    type: Literal["Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation"] = Field(alias="Type")
    topic_arn: str = Field(alias="TopicArn")
    message: str = Field(alias="Message")
    subscribe_url: str | None = Field(default=None, alias="SubscribeURL")


def _from_sns(body: _SNS) -> Parsed:
    if body.type == "SubscriptionConfirmation":
        if not body.subscribe_url:
            raise NotificationError("SNS SubscriptionConfirmation without a SubscribeURL")
        return Parsed(confirmation=Confirmation(topic_arn=body.topic_arn, subscribe_url=body.subscribe_url))
    if body.type == "UnsubscribeConfirmation":
        return Parsed(ignored=1)
    inner = _loads(body.message)
    parsed = _dispatch(inner, sns=True)
    return parsed


# --------------------------------------------------------------------------- entry point


def _loads(raw: bytes | str) -> Any:
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NotificationError(f"body is not JSON: {exc}") from None


def _dispatch(data: Any, *, sns: bool) -> Parsed:
    if not isinstance(data, dict):
        raise NotificationError("body is not a JSON object")
    try:
        if "Records" in data:
            source = "sns" if sns else ("minio" if "EventName" in data else "s3")
            return _from_records(_Records.model_validate(data), source)
        if data.get("Event") == "s3:TestEvent":
            return Parsed(ignored=1)
        if "detail-type" in data:
            return _from_eventbridge(_EventBridge.model_validate(data))
        if "Type" in data and "TopicArn" in data and not sns:
            return _from_sns(_SNS.model_validate(data))
    except ValidationError as exc:
        # Field paths only: pydantic's default message would echo the body's values.
        where = "; ".join(".".join(str(p) for p in e["loc"]) + f": {e['type']}" for e in exc.errors())
        raise NotificationError(f"unexpected notification shape ({where})") from None
    raise NotificationError("not an S3, SNS or EventBridge notification")


def parse_notification(raw: bytes | str) -> Parsed:
    """Every object-created notice in one POSTed body; NotificationError when malformed."""
    return _dispatch(_loads(raw), sns=False)
