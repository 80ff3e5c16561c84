from __future__ import annotations

from typing import Any

import pytest

from analytics.dimensions import dimensions, from_key, object_metadata

PATTERN = "calls/{date}/{queue}/{agent}/{call_id}.wav"


def test_a_key_pattern_names_one_segment_per_field() -> None:
    assert from_key("calls/2026-11-21/sales/ann/c-17.wav", PATTERN) == {
        "date": "2026-11-21",
        "queue": "sales",
        "agent": "ann",
        "call_id": "c-17",
    }
    assert from_key("calls/2026-11-21/sales/c-17.wav", PATTERN) == {}  # a segment short
    assert from_key("calls/2026-11-21/sales/ann/c-17.flac", PATTERN) == {}
    assert from_key("anything", None) == {}


def test_metadata_wins_over_the_key() -> None:
    got = dimensions("calls/2026-11-21/sales/ann/c-17.wav", PATTERN, {"Agent": "bob", "site": "leeds"})
    assert got["agent"] == "bob" and got["site"] == "leeds" and got["queue"] == "sales"


def test_a_field_named_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        from_key("a/b", "{x}/{x}")


def test_metadata_of_one_object_version_from_s3(s3_client: Any, bucket: str) -> None:
    key = "calls/2026-11-21/sales/ann/c-17.wav"
    first = s3_client.put_object(
        Bucket=bucket, Key=key, Body=b"x", Metadata={"agent": "bob", "site": "leeds"}
    )
    s3_client.put_object(Bucket=bucket, Key=key, Body=b"y", Metadata={"agent": "carol"})
    assert object_metadata(s3_client, bucket, key, first["VersionId"]) == {"agent": "bob", "site": "leeds"}
    assert object_metadata(s3_client, bucket, key) == {"agent": "carol"}
    meta = object_metadata(s3_client, bucket, key, first["VersionId"])
    assert dimensions(key, PATTERN, meta)["agent"] == "bob"
