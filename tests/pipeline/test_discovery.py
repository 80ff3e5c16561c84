"""Discovery reads a prefix a page at a time: no process holds the night's listing, however
many objects the prefix has, and the night still works through them oldest first."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from localstack.seaweedfs import SeaweedFS
from tests.pipeline.helpers import configure
from valence_pipeline.s3 import head_version, list_latest_versions

# Uploaded in this order, one second apart (S3 keeps LastModified to the second): the oldest
# come last in key order, so arrival order and listing order disagree.
UPLOADS = ("in/e.wav", "in/d.wav", "in/c.wav", "in/b.wav", "in/a.wav")


def _list_calls(s3_client: Any) -> list[tuple[str, dict[str, Any]]]:
    calls: list[tuple[str, dict[str, Any]]] = []

    def seen(params: dict[str, Any], model: Any, **_: Any) -> None:
        calls.append((model.name, dict(params)))

    s3_client.meta.events.register("provide-client-params.s3.ListObjectVersions", seen)
    s3_client.meta.events.register("provide-client-params.s3.ListObjectsV2", seen)
    return calls


def test_an_unversioned_prefix_is_listed_a_page_at_a_time_with_each_objects_etag(s3_client: Any) -> None:
    plain_bucket = f"plain-{uuid.uuid4().hex[:12]}"  # versioning never enabled: 'null' versions
    s3_client.create_bucket(Bucket=plain_bucket)
    keys = [f"pages/{i:02d}.wav" for i in range(7)]
    for i, key in enumerate(keys):
        s3_client.put_object(Bucket=plain_bucket, Key=key, Body=f"body {i}".encode())
    s3_client.put_object(Bucket=plain_bucket, Key="pagesx/other.wav", Body=b"another prefix")
    calls = _list_calls(s3_client)

    listed = list(list_latest_versions(s3_client, plain_bucket, "pages/", page_size=3))

    assert [o.key for o in listed] == keys
    for obj in listed:  # every 'null' version carries the ETag its reads are pinned to
        assert obj.version_id == "null"
        assert obj.etag == head_version(s3_client, plain_bucket, obj.key).etag
    # Three pages of versions, each with one ETag listing of its own range of keys.
    assert [name for name, _ in calls].count("ListObjectVersions") == 3
    assert all(params.get("MaxKeys") == 3 for _, params in calls)
    etag_pages = [params for name, params in calls if name == "ListObjectsV2"]
    assert [p.get("StartAfter") for p in etag_pages] == [None, keys[2], keys[5]]


@pytest.mark.usefixtures("prefect_harness")
def test_discover_registers_page_by_page_and_returns_the_night_oldest_first(
    monkeypatch: pytest.MonkeyPatch,
    seaweedfs: SeaweedFS,
    s3_client: Any,
    bucket: str,
    emu: Any,
    tmp_path: Path,
) -> None:
    import tasks.discover
    from results_store.models import Recording
    from tasks.discover import discover
    from valence_pipeline.runtime import runtime

    for i, key in enumerate(UPLOADS):
        if i:
            time.sleep(1.1)
        s3_client.put_object(Bucket=bucket, Key=key, Body=f"recording {i}".encode())
    database_url = f"sqlite:///{tmp_path / 'results.db'}"
    configure(monkeypatch, seaweedfs, emu, database_url, tmp_path / "dataset")
    monkeypatch.setattr(tasks.discover, "LIST_PAGE_SIZE", 2)
    monkeypatch.setenv("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")  # the task called as a function
    store = runtime().store
    registered: list[list[str]] = []
    real_register = store.register

    def register(objects: Any, run_id: str) -> list[int]:
        registered.append([o.key for o in objects])
        return real_register(objects, run_id)

    monkeypatch.setattr(store, "register", register)

    def keys(ids: list[int]) -> list[str]:
        with store.store.session_scope() as s:
            return [s.get(Recording, rid).key for rid in ids]  # type: ignore[union-attr]

    night = discover.fn([f"s3://{bucket}/in/"], "night-1")
    assert registered == [["in/a.wav", "in/b.wav"], ["in/c.wav", "in/d.wav"], ["in/e.wav"]]
    assert keys(night.ids) == list(UPLOADS)  # arrival order, not key order

    registered.clear()
    budget = discover.fn([f"s3://{bucket}/in/"], "night-2", max_files=2)
    assert registered == [["in/e.wav", "in/d.wav"]]  # the oldest two, found on the last pages
    assert keys(budget.ids) == ["in/e.wav", "in/d.wav"]
