"""SNS's signature as the alternative to the secret: a real RSA key and certificate stand in
for Amazon's, served by an injected certificate fetcher."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient
from pydantic import SecretStr

from notifications import ledger, sns
from notifications.messages import ObjectNotice
from notifications.webhook import create_app
from results_store.db import Store, upgrade
from tests.notifications import samples

TOPIC = "arn:aws:sns:eu-west-1:123456789012:recordings"
CERT_URL = (
    "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem"
)

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _cert(key: rsa.RSAPrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


CERT = _cert(KEY)


def signed(message: dict[str, Any], version: str = "2", key: rsa.RSAPrivateKey = KEY) -> bytes:
    message = {**message, "SignatureVersion": version, "SigningCertURL": CERT_URL}
    algorithm = hashes.SHA256() if version == "2" else hashes.SHA1()  # noqa: S303 - SNS's version 1
    signature = key.sign(sns.string_to_sign(message), padding.PKCS1v15(), algorithm)
    return json.dumps({**message, "Signature": base64.b64encode(signature).decode()}).encode()


def notification(topic: str = TOPIC) -> dict[str, Any]:
    message = json.loads(samples.sns_notification(samples.aws_s3(samples.s3_record("calls/signed.wav"))))
    message["TopicArn"] = topic
    return {k: v for k, v in message.items() if k not in {"Signature", "SignatureVersion", "SigningCertURL"}}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    url = f"sqlite:///{tmp_path / 'results.db'}"
    upgrade(url)
    store = Store(url)

    def record(notices: list[ObjectNotice]) -> int:
        with store.session_scope() as s:
            return ledger.record_notices(s, notices)

    fetched: list[str] = []

    def fetch_cert(url: str) -> bytes:
        fetched.append(url)
        return CERT

    yield TestClient(
        create_app(SecretStr("unused-here"), record, sns_topic_arns=[TOPIC], fetch_cert=fetch_cert)
    )
    store.dispose()


@pytest.mark.parametrize("version", ["1", "2"])
def test_a_signed_message_from_an_allowed_topic_needs_no_secret(client: TestClient, version: str) -> None:
    resp = client.post("/", content=signed(notification(), version))
    assert resp.status_code == 200
    assert resp.json() == {"objects": 1, "new": 1, "ignored": 0}


def test_a_signed_message_from_another_topic_is_refused(client: TestClient) -> None:
    other = "arn:aws:sns:eu-west-1:999999999999:someone-elses"
    assert client.post("/", content=signed(notification(other))).status_code == 401


def test_a_tampered_message_is_refused(client: TestClient) -> None:
    body = json.loads(signed(notification()))
    body["Message"] = samples.aws_s3(samples.s3_record("calls/forged.wav")).decode()
    assert client.post("/", content=json.dumps(body).encode()).status_code == 401


def test_a_signature_by_another_key_is_refused(client: TestClient) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert client.post("/", content=signed(notification(), key=other)).status_code == 401


def test_a_certificate_elsewhere_than_sns_is_refused(client: TestClient) -> None:
    body = json.loads(signed(notification()))
    body["SigningCertURL"] = "https://attacker.example.com/cert.pem"
    assert client.post("/", content=json.dumps(body).encode()).status_code == 401


def test_without_allowed_topics_only_the_secret_counts(tmp_path: Path) -> None:
    app = TestClient(create_app(SecretStr("s"), lambda notices: 0, fetch_cert=lambda url: CERT))
    assert app.post("/", content=signed(notification())).status_code == 401
