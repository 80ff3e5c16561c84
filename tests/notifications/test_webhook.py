"""The webhook against every body shape its senders POST, with the notices read back from a
real (SQLite) results database."""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from fastapi.testclient import TestClient
from pydantic import SecretStr

from notifications import ledger
from notifications.messages import ObjectNotice
from notifications.webhook import create_app
from results_store.db import Store, upgrade
from tests.notifications import samples

SECRET = "s3cr3t-for-tests-only"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    url = f"sqlite:///{tmp_path / 'results.db'}"
    upgrade(url)
    st = Store(url)
    yield st
    st.dispose()


def _record_into(store: Store) -> Any:
    def record(notices: list[ObjectNotice]) -> int:
        with store.session_scope() as s:
            return ledger.record_notices(s, notices)

    return record


@pytest.fixture
def client(store: Store) -> TestClient:
    return TestClient(create_app(SecretStr(SECRET), _record_into(store)))


def notices(store: Store) -> list[tuple[Any, ...]]:
    with store.session_scope() as s:
        rows = s.execute(
            sa.text(
                "select bucket, key, object_version, version_id, etag, size_bytes, source "
                "from upload_notices order by id"
            )
        ).all()
    return [tuple(r) for r in rows]


def _ours(caplog: pytest.LogCaptureFixture) -> str:
    """The webhook's own log lines (the test client logs the URLs it requests)."""
    return "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("notifications"))


def post(client: TestClient, body: bytes, **headers: str) -> Any:
    return client.post("/", content=body, headers={"Authorization": f"Bearer {SECRET}", **headers})


def test_aws_s3_records_with_an_encoded_key(client: TestClient, store: Store) -> None:
    # S3 encodes keys form-style: space as `+`, a real `+` as %2B, UTF-8 percent-encoded.
    body = samples.aws_s3(samples.s3_record("calls/team+a/r%C3%A9union+%2B1.wav", size=4096))
    resp = post(client, body)
    assert resp.status_code == 200
    assert resp.json() == {"objects": 1, "new": 1, "ignored": 0}
    assert notices(store) == [
        (
            "recordings",
            "calls/team a/réunion +1.wav",
            samples.VERSION,
            samples.VERSION,
            samples.ETAG,
            4096,
            "s3",
        )
    ]


def test_unversioned_bucket_is_told_apart_by_etag(client: TestClient, store: Store) -> None:
    post(client, samples.aws_s3(samples.s3_record("a.wav", version_id=None, etag='"abc-2"')))
    assert notices(store) == [("recordings", "a.wav", "etag:abc-2", None, "abc-2", 1024, "s3")]


def test_sns_notification_envelope(client: TestClient, store: Store) -> None:
    inner = samples.aws_s3(
        samples.s3_record("calls/x+y.wav"), samples.s3_record("calls/z.flac", version_id="v2")
    )
    resp = post(client, samples.sns_notification(inner), **{"x-amz-sns-message-type": "Notification"})
    assert resp.status_code == 200 and resp.json()["new"] == 2
    assert [(k, v, src) for _, k, v, *_, src in notices(store)] == [
        ("calls/x y.wav", samples.VERSION, "sns"),
        ("calls/z.flac", "v2", "sns"),
    ]


class _Recorder(BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self) -> None:
        type(self).seen.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"<ConfirmSubscriptionResponse/>")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def local_sns() -> Iterator[str]:
    """A local stand-in for SNS's SubscribeURL endpoint."""
    _Recorder.seen = []
    server = HTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_sns_subscription_is_confirmed_by_fetching_the_subscribe_url(store: Store, local_sns: str) -> None:
    def fetch(url: str) -> None:
        requests.get(url, timeout=5).raise_for_status()

    app = TestClient(create_app(SecretStr(SECRET), _record_into(store), fetch=fetch))
    url = f"{local_sns}/?Action=ConfirmSubscription&TopicArn=arn:aws:sns:eu-west-1:123456789012:recordings&Token=2336"
    resp = post(app, samples.sns_subscription_confirmation(url))
    assert resp.status_code == 200
    assert resp.json() == {"confirmed": "arn:aws:sns:eu-west-1:123456789012:recordings"}
    assert _Recorder.seen == [
        "/?Action=ConfirmSubscription&TopicArn=arn:aws:sns:eu-west-1:123456789012:recordings&Token=2336"
    ]
    assert notices(store) == []


def test_the_default_fetcher_only_confirms_with_amazon_sns(client: TestClient, local_sns: str) -> None:
    resp = post(client, samples.sns_subscription_confirmation(f"{local_sns}/?Action=ConfirmSubscription"))
    assert resp.status_code == 400
    assert "not an https URL of Amazon SNS" in resp.json()["error"]
    assert _Recorder.seen == []


def test_eventbridge_object_created(client: TestClient, store: Store) -> None:
    # EventBridge sends keys as stored (not URL-encoded).
    resp = post(client, samples.eventbridge("calls/2026-11-29T10:00:00 a+b.wav"))
    assert resp.status_code == 200
    assert notices(store) == [
        (
            "recordings",
            "calls/2026-11-29T10:00:00 a+b.wav",
            samples.VERSION,
            samples.VERSION,
            samples.ETAG,
            2048,
            "eventbridge",
        )
    ]


def test_minio_body(client: TestClient, store: Store) -> None:
    resp = post(client, samples.minio("calls%2Fteam+a%2Fr%C3%A9union.wav", "calls/team a/réunion.wav"))
    assert resp.status_code == 200
    assert [(k, src) for _, k, *_, src in notices(store)] == [("calls/team a/réunion.wav", "minio")]


def test_ceph_body_keys_are_as_stored(client: TestClient, store: Store) -> None:
    resp = post(client, samples.ceph("calls/a+b%20c.wav"))
    assert resp.status_code == 200
    assert notices(store) == [
        ("recordings", "calls/a+b%20c.wav", f"etag:{samples.ETAG}", None, samples.ETAG, 1024, "ceph")
    ]


def test_other_events_are_answered_and_ignored(client: TestClient, store: Store) -> None:
    removed = samples.s3_record("calls/old.wav", event="ObjectRemoved:Delete")
    resp = post(client, samples.aws_s3(removed, samples.s3_record("calls/new.wav")))
    assert resp.json() == {"objects": 1, "new": 1, "ignored": 1}
    assert post(client, samples.S3_TEST_EVENT).json() == {"objects": 0, "new": 0, "ignored": 1}
    assert [k for _, k, *_ in notices(store)] == ["calls/new.wav"]


@pytest.mark.parametrize(
    "headers, path",
    [
        ({"Authorization": f"Bearer {SECRET}"}, "/"),
        ({"X-Valence-Pipeline-Token": SECRET}, "/"),
        ({"Authorization": "Basic " + base64.b64encode(f"sns:{SECRET}".encode()).decode()}, "/"),
        ({}, f"/?token={SECRET}"),
    ],
    ids=["bearer", "header", "basic", "query"],
)
def test_each_way_of_sending_the_secret(store: Store, headers: dict[str, str], path: str) -> None:
    app = TestClient(create_app(SecretStr(SECRET), _record_into(store)))
    resp = app.post(path, content=samples.aws_s3(samples.s3_record("a.wav")), headers=headers)
    assert resp.status_code == 200


@pytest.mark.parametrize(
    "headers, path",
    [
        ({}, "/"),
        ({"Authorization": "Bearer wrong"}, "/"),
        ({"Authorization": f"Bearer {SECRET}x"}, "/"),
        ({"Authorization": "Basic !!!"}, "/"),
        ({"X-Valence-Pipeline-Token": ""}, "/?token=nope"),
    ],
    ids=["none", "wrong", "longer", "bad-basic", "wrong-query"],
)
def test_a_bad_secret_is_refused_and_nothing_recorded(
    store: Store, headers: dict[str, str], path: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = TestClient(create_app(SecretStr(SECRET), _record_into(store)))
    with caplog.at_level(logging.INFO):
        resp = app.post(path, content=samples.aws_s3(samples.s3_record("a.wav")), headers=headers)
    assert resp.status_code == 401
    assert notices(store) == []
    ours = _ours(caplog)
    assert "refused: no valid secret" in ours
    assert SECRET not in ours and "nope" not in ours


def test_the_secret_is_never_logged(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        client.post(f"/?token={SECRET}", content=samples.aws_s3(samples.s3_record("a.wav")))
        client.post(f"/?token={SECRET}", content=b"{not json")
    assert _ours(caplog) and SECRET not in _ours(caplog)


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'{"hello": "world"}',
        json.dumps({"Records": [{"eventName": "ObjectCreated:Put"}]}).encode(),
        json.dumps({"Records": "nope"}).encode(),
        samples.aws_s3(samples.s3_record("calls/")),
        samples.aws_s3(samples.s3_record("a.wav", version_id=None, etag="")),
        samples.sns_notification(b"not json inside"),
        json.dumps({"detail-type": "Object Created", "source": "aws.s3", "detail": {}}).encode(),
    ],
    ids=[
        "not-json",
        "not-utf8",
        "array",
        "unknown",
        "record-without-s3",
        "records-not-list",
        "prefix-key",
        "no-version-no-etag",
        "sns-bad-message",
        "eventbridge-no-object",
    ],
)
def test_a_malformed_body_gets_400_and_a_log_line(
    client: TestClient, store: Store, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="notifications.webhook"):
        resp = post(client, body)
    assert resp.status_code == 400
    assert resp.json()["error"]
    assert any("rejected" in r.getMessage() for r in caplog.records)
    assert notices(store) == []
    # The server is still there for the next, good notification.
    assert post(client, samples.aws_s3(samples.s3_record("ok.wav"))).status_code == 200


def test_duplicates_and_redeliveries_are_recorded_once(client: TestClient, store: Store) -> None:
    record = samples.s3_record("calls/a.wav")
    body = samples.aws_s3(record, record)
    assert post(client, body).json() == {"objects": 2, "new": 1, "ignored": 0}
    assert post(client, body).json() == {"objects": 2, "new": 0, "ignored": 0}  # a redelivery
    assert post(client, samples.sns_notification(samples.aws_s3(record))).json()["new"] == 0
    # A rewrite of the same key is a new version, so a new notice.
    assert post(client, samples.aws_s3(samples.s3_record("calls/a.wav", version_id="v2"))).json()["new"] == 1
    assert [(k, v) for _, k, v, *_ in notices(store)] == [
        ("calls/a.wav", samples.VERSION),
        ("calls/a.wav", "v2"),
    ]


def test_a_database_failure_is_a_503_the_sender_retries(caplog: pytest.LogCaptureFixture) -> None:
    def broken(notices: list[ObjectNotice]) -> int:
        raise sa.exc.OperationalError("insert", {}, Exception("database is away"))

    app = TestClient(create_app(SecretStr(SECRET), broken))
    resp = post(app, samples.aws_s3(samples.s3_record("a.wav")))
    assert resp.status_code == 503


def test_an_empty_secret_is_refused_at_start(store: Store) -> None:
    with pytest.raises(ValueError, match="non-empty shared secret"):
        create_app(SecretStr(""), _record_into(store))


def test_only_audio_keys_are_recorded_when_asked(store: Store) -> None:
    app = TestClient(create_app(SecretStr(SECRET), _record_into(store), suffixes=[".wav", ".flac"]))
    body = samples.aws_s3(
        samples.s3_record("calls/a.WAV"), samples.s3_record("calls/notes.txt"), samples.s3_record("b.flac")
    )
    assert post(app, body).json() == {"objects": 2, "new": 2, "ignored": 1}
    assert [k for _, k, *_ in notices(store)] == ["calls/a.WAV", "b.flac"]


def test_an_oversized_body_is_refused(client: TestClient, store: Store) -> None:
    records = [samples.s3_record(f"calls/{i:05d}.wav") for i in range(2000)]  # about 1.5 MiB
    resp = post(client, samples.aws_s3(*records))
    assert resp.status_code == 413
    assert notices(store) == []
