"""Notification bodies as each sender documents them (field for field, values made up)."""

from __future__ import annotations

import json
from typing import Any

ETAG = "9b2cf535f27731c974343645a3985328"
VERSION = "3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY"


def s3_record(
    key: str,
    *,
    bucket: str = "recordings",
    event: str = "ObjectCreated:Put",
    version_id: str | None = VERSION,
    etag: str = ETAG,
    size: int = 1024,
    source: str = "aws:s3",
) -> dict[str, Any]:
    """One record of AWS S3's event message structure (event version 2.1)."""
    obj: dict[str, Any] = {"key": key, "size": size, "eTag": etag, "sequencer": "0A1B2C3D4E5F678901"}
    if version_id is not None:
        obj["versionId"] = version_id
    return {
        "eventVersion": "2.1",
        "eventSource": source,
        "awsRegion": "eu-west-1",
        "eventTime": "2026-11-29T10:00:00.000Z",
        "eventName": event,
        "userIdentity": {"principalId": "AWS:AIDAEXAMPLE"},
        "requestParameters": {"sourceIPAddress": "203.0.113.7"},
        "responseElements": {"x-amz-request-id": "C3D13FE58DE4C810", "x-amz-id-2": "FMyUVURIY8/IgAtTv8xR"},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "recordings-created",
            "bucket": {
                "name": bucket,
                "ownerIdentity": {"principalId": "A3NL1KOZZKExample"},
                "arn": f"arn:aws:s3:::{bucket}",
            },
            "object": obj,
        },
    }


def aws_s3(*records: dict[str, Any]) -> bytes:
    return json.dumps({"Records": list(records)}).encode()


def sns_notification(inner: bytes) -> bytes:
    return json.dumps(
        {
            "Type": "Notification",
            "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
            "TopicArn": "arn:aws:sns:eu-west-1:123456789012:recordings",
            "Subject": "Amazon S3 Notification",
            "Message": inner.decode(),
            "Timestamp": "2026-11-29T10:00:01.000Z",
            "SignatureVersion": "1",
            "Signature": "EXAMPLEpH+DcEwjAPg8O9mY8dReBSwksfg2S7WKQcikcNKWLQjwu6A4VbeS0QHVCkhRS7fUQvi2egU3N858fiTDN6bkkOxYDVrY0Ad8L10Hs3zH81mtnPk5uvvolIC1CXGu43obcgFxeL3khZl8IKvO61GWB6jI9b5+gLPoBc1Q=",
            "SigningCertURL": "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem",
            "UnsubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=arn:aws:sns:eu-west-1:123456789012:recordings:c9135db0",
        }
    ).encode()


def sns_subscription_confirmation(subscribe_url: str) -> bytes:
    return json.dumps(
        {
            "Type": "SubscriptionConfirmation",
            "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
            "Token": "2336412f37fb687f5d51e6e241d09c805a5a57b30d712f794cc5f6a988666d92768dd60a747ba6f3beb71854e285d6ad02428b09ceece29417f1f02d609c582afbacc99c583a916b9981dd2728f4ae6fdb82efd087cc3b7849e05798d2d2785c03b0879594eeac82c01f235d0e717736",
            "TopicArn": "arn:aws:sns:eu-west-1:123456789012:recordings",
            "Message": "You have chosen to subscribe to the topic arn:aws:sns:eu-west-1:123456789012:recordings.\nTo confirm the subscription, visit the SubscribeURL included in this message.",
            "SubscribeURL": subscribe_url,
            "Timestamp": "2026-11-29T09:59:00.000Z",
            "SignatureVersion": "1",
            "Signature": "EXAMPLE",
            "SigningCertURL": "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem",
        }
    ).encode()


def eventbridge(key: str, *, bucket: str = "recordings", version_id: str | None = VERSION) -> bytes:
    obj: dict[str, Any] = {"key": key, "size": 2048, "etag": ETAG, "sequencer": "0064D3901D00059242"}
    if version_id is not None:
        obj["version-id"] = version_id
    return json.dumps(
        {
            "version": "0",
            "id": "c9888434-815d-c6f4-9fc2-4dd7bdeccaaf",
            "detail-type": "Object Created",
            "source": "aws.s3",
            "account": "123456789012",
            "time": "2026-11-29T10:00:00Z",
            "region": "eu-west-1",
            "resources": [f"arn:aws:s3:::{bucket}"],
            "detail": {
                "version": "0",
                "bucket": {"name": bucket},
                "object": obj,
                "request-id": "XRRTKJXSZQCWNQR1",
                "requester": "123456789012",
                "source-ip-address": "203.0.113.7",
                "reason": "PutObject",
            },
        }
    ).encode()


def minio(encoded_key: str, plain_key: str, *, bucket: str = "recordings") -> bytes:
    """MinIO's webhook body: the S3 records (event name prefixed `s3:`, key query-escaped, `/`
    included) plus its own top-level `EventName` and `Key`."""
    record = s3_record(encoded_key, bucket=bucket, event="s3:ObjectCreated:Put", source="minio:s3")
    record["s3"]["object"].update({"contentType": "audio/wav", "userMetadata": {"content-type": "audio/wav"}})
    record["source"] = {"host": "10.0.0.5", "port": "", "userAgent": "MinIO (linux; amd64) minio-go/v7.0.70"}
    return json.dumps(
        {"EventName": "s3:ObjectCreated:Put", "Key": f"{bucket}/{plain_key}", "Records": [record]}
    ).encode()


def ceph(key: str, *, bucket: str = "recordings", version_id: str = "") -> bytes:
    """Ceph RGW's HTTP push body (key as stored; versionId empty when unversioned)."""
    record = s3_record(key, bucket=bucket, version_id=version_id, source="ceph:s3")
    record["eventVersion"] = "2.2"
    record["s3"]["bucket"]["id"] = "f9a7f6a0-3f2e-4a4b-9b7b-1b2c3d4e5f60.4157.1"
    record["s3"]["object"].update({"metadata": [], "tags": []})
    record.update({"eventId": "1700000000.123456.9b2cf535f27731c974343645a3985328", "opaqueData": ""})
    return json.dumps({"Records": [record]}).encode()


S3_TEST_EVENT = json.dumps(
    {
        "Service": "Amazon S3",
        "Event": "s3:TestEvent",
        "Time": "2026-11-29T09:58:00.000Z",
        "Bucket": "recordings",
        "RequestId": "5582815E1AEA5ADF",
        "HostId": "8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3eKxsPzbB9wrR+YstdA6Knx4Ip8EXAMPLE",
    }
).encode()
