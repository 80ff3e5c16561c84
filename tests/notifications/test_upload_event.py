"""Object version URIs (what events and `process_recordings(uris)` carry) and the upload event
built for a batch."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from deployments.events import UPLOAD_EVENT, batch_of_uris, upload_event
from notifications.ledger import UploadBatch
from notifications.messages import ObjectNotice
from valence_pipeline.s3 import object_uri, parse_object_uri

keys = st.text(min_size=1, max_size=60).filter(lambda k: "\x00" not in k)
versions = st.text(min_size=1, max_size=40).filter(lambda v: v != "null")


@given(key=keys, version=versions)
def test_a_version_uri_round_trips_any_key(key: str, version: str) -> None:
    uri = object_uri("recordings", key, version)
    assert uri.startswith("s3://recordings/")
    assert parse_object_uri(uri) == ("recordings", key, version)


def test_examples() -> None:
    assert object_uri("b", "calls/a b?.wav", "v/1+") == "s3://b/calls/a%20b%3F.wav?versionId=v%2F1%2B"
    assert object_uri("b", "calls/a b.wav", None) == "s3://b/calls/a b.wav"  # as before: literal
    assert object_uri("b", "calls/a b.wav", "null") == "s3://b/calls/a b.wav"  # unversioned bucket
    assert parse_object_uri("s3://b/calls/a b%20.wav") == ("b", "calls/a b%20.wav", None)


def test_the_event_names_every_object_version_of_the_batch() -> None:
    objects = (
        ObjectNotice(bucket="b", key="calls/a b.wav", version_id="v1", etag="e1", size=10, source="s3"),
        ObjectNotice(bucket="b", key="calls/c.wav", etag="e2", source="watch"),  # unversioned
    )
    batch = UploadBatch(str(uuid.uuid4()), objects)
    event = upload_event(batch)
    assert event.event == UPLOAD_EVENT
    assert str(event.id) == batch.batch_id  # sent twice, seen once
    assert event.resource.id == "s3://b/calls/a%20b.wav?versionId=v1"
    assert event.resource["s3.key"] == "calls/a b.wav"
    assert event.resource["s3.version-id"] == "v1"
    assert event.resource["s3.etag"] == "e1"
    assert event.resource["valence-pipeline.batch-size"] == "2"
    assert [r.id for r in event.related] == ["s3://b/calls/a%20b.wav?versionId=v1", "s3://b/calls/c.wav"]
    assert {r.role for r in event.related} == {"recording"}
    assert event.payload["uris"] == ["s3://b/calls/a%20b.wav?versionId=v1", "s3://b/calls/c.wav"]


def test_notify_names_the_version_it_was_given() -> None:
    [obj] = batch_of_uris(["s3://b/calls/x.wav"], version_id="v7").objects
    assert (obj.bucket, obj.key, obj.version_id) == ("b", "calls/x.wav", "v7")
    [obj] = batch_of_uris(["s3://b/calls/x%20y.wav?versionId=v8"]).objects
    assert (obj.key, obj.version_id) == ("calls/x y.wav", "v8")
    assert len(batch_of_uris(["s3://b/1.wav", "s3://b/2.wav"]).objects) == 2  # one event for both
