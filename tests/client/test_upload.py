"""Multipart upload against a scripted S3-like stub: laziness, bounds, ETags, ordering."""

from __future__ import annotations

import hashlib
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.client.conftest import VALENCE_KEY, Sleeps, make_valence
from tests.client.stubs import Recorded, Reply, StubServer
from valence_client import (
    FileSizeLimitExceededError,
    InvalidInputError,
    MissingFileError,
    PartSizeAdjuster,
    UploadError,
    ValenceClient,
)
from valence_client import upload as upload_module
from valence_client.upload import MAX_PARTS, MIN_PART_SIZE, GiB, MiB

PART = 4096
SMALL_PARTS = PartSizeAdjuster(min_size=1024)
SIGNATURE = "c0ffee0123456789deadbeef0123456789abcdef"


def etag_of(data: bytes) -> str:
    """S3's ETag of a single-part body: its MD5 (a checksum, not security)."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


class FakeStore:
    """Initiate/PUT/complete on a stub server, with knobs for misbehaving."""

    def __init__(self, stub: StubServer, *, put_delay_s: float = 0.0) -> None:
        self.stub = stub
        self.put_delay_s = put_delay_s
        self.received: dict[int, bytes] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.bad_etags: dict[int, int] = {}  # part -> how many wrong ETags to answer first
        self.fail_parts: dict[int, list[Reply]] = {}
        self._lock = threading.Lock()
        stub.route("POST", r"/v1/asynch/emotion/upload/initiate", self.initiate)
        stub.route("PUT", r"/_parts/\d+", self.put)
        stub.route("POST", r"/v1/asynch/emotion/upload/complete", Reply(json={"status": "upload_completed"}))

    def initiate(self, request: Recorded) -> Reply:
        count = int(request.query["part_count"])
        urls = [
            {"part_number": n, "url": f"{self.stub.base_url}/_parts/{n}?expires=9&signature={SIGNATURE}"}
            for n in range(count, 0, -1)  # deliberately out of order
        ]
        return Reply(json={"upload_id": "up-1", "request_id": "req-1", "presigned_urls": urls})

    def put(self, request: Recorded) -> Reply:
        number = int(request.path.rsplit("/", 1)[1])
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            scripted = self.fail_parts.get(number)
            failure = scripted.pop(0) if scripted else None
            wrong = self.bad_etags.get(number, 0)
            if wrong:
                self.bad_etags[number] = wrong - 1
        time.sleep(self.put_delay_s)
        with self._lock:
            self.in_flight -= 1
            if failure is None:
                self.received[number] = request.body
        if failure is not None:
            return failure
        md5 = etag_of(b"x" if wrong else request.body)
        return Reply(headers={"ETag": f'"{md5}"'})

    def completed(self) -> dict[str, Any]:
        (done,) = self.stub.calls("POST", r"/v1/asynch/emotion/upload/complete")
        return dict(done.json())


@pytest.fixture
def store(stub: StubServer) -> FakeStore:
    return FakeStore(stub)


@pytest.fixture
def uploader_client(stub: StubServer, sleeps: Sleeps) -> ValenceClient:
    # The stub is on loopback, where ETags are not checked by default: these tests check them.
    return make_valence(
        stub.base_url,
        sleeps,
        part_size=PART,
        part_size_adjuster=SMALL_PARTS,
        max_threads=3,
        check_part_etags=True,
    )


def payload(size: int) -> bytes:
    return bytes((i * 7 + i // 251) % 256 for i in range(size))


def write(tmp_path: Path, data: bytes, name: str = "call.wav") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_parts_go_up_and_complete_gets_them_sorted(
    tmp_path: Path, store: FakeStore, uploader_client: ValenceClient
) -> None:
    data = payload(10 * PART + 123)
    seen_at_initiate: list[int] = []

    def on_initiated(request_id: str) -> None:
        seen_at_initiate.append(len(store.received))
        assert request_id == "req-1"

    request_id = uploader_client.asynch.upload(str(write(tmp_path, data)), on_initiated=on_initiated)

    assert request_id == "req-1" and seen_at_initiate == [0]  # the id is known before any part
    (initiate,) = store.stub.calls("POST", r"/v1/asynch/emotion/upload/initiate")
    assert initiate.query == {"file_name": "call.wav", "part_count": "11"}
    assert b"".join(store.received[n] for n in sorted(store.received)) == data
    done = store.completed()
    assert [p["PartNumber"] for p in done["parts"]] == list(range(1, 12))
    assert done["parts"][0]["ETag"] == f'"{etag_of(data[:PART])}"'
    assert (done["request_id"], done["upload_id"]) == ("req-1", "up-1")


def test_part_urls_get_no_api_key(tmp_path: Path, store: FakeStore, uploader_client: ValenceClient) -> None:
    uploader_client.asynch.upload(str(write(tmp_path, payload(3 * PART))))
    puts = store.stub.calls("PUT", r"/_parts/\d+")
    assert len(puts) == 3
    assert all(p.header("x-api-key") is None and p.header("Authorization") is None for p in puts)
    assert store.stub.calls("POST", r".*initiate")[0].header("x-api-key") == VALENCE_KEY


class CountingReader(io.RawIOBase):
    """A non-seekable source that records, at each read, how many parts were read but not yet
    received by the server: the parts held in memory."""

    def __init__(self, data: bytes, store: FakeStore) -> None:
        self._data = io.BytesIO(data)
        self._store = store
        self.reads = 0
        self.max_held = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        chunk = self._data.read(size)
        if chunk:
            self.reads += 1
            with self._store._lock:
                held = self.reads - len(self._store.received)
            self.max_held = max(self.max_held, held)
        return chunk


def test_memory_is_bounded_by_threads_whatever_the_size(stub: StubServer, sleeps: Sleeps) -> None:
    store = FakeStore(stub, put_delay_s=0.02)
    data = payload(40 * PART)
    reader = CountingReader(data, store)
    with make_valence(
        stub.base_url, sleeps, part_size=PART, part_size_adjuster=SMALL_PARTS, max_threads=3
    ) as c:
        c.asynch.upload(reader, size=len(data))
    assert reader.reads == 40
    assert store.max_in_flight <= 3
    assert reader.max_held <= 3  # a part is read only once a slot is free


def test_progress_reports_every_byte(
    tmp_path: Path, store: FakeStore, uploader_client: ValenceClient
) -> None:
    seen: list[int] = []
    lock = threading.Lock()

    def progress(n: int) -> None:
        with lock:
            seen.append(n)

    uploader_client.asynch.upload(str(write(tmp_path, payload(5 * PART + 1))), progress=progress)
    assert sum(seen) == 5 * PART + 1 and len(seen) == 6


def test_etag_mismatch_is_retried_then_accepted(
    tmp_path: Path, store: FakeStore, uploader_client: ValenceClient
) -> None:
    store.bad_etags[2] = 1
    uploader_client.asynch.upload(str(write(tmp_path, payload(3 * PART))))
    assert len(store.stub.calls("PUT", r"/_parts/2")) == 2
    assert store.completed()["parts"][1]["ETag"] == f'"{etag_of(payload(3 * PART)[PART : 2 * PART])}"'


def test_etag_that_never_matches_is_an_upload_error(
    tmp_path: Path, store: FakeStore, uploader_client: ValenceClient
) -> None:
    store.bad_etags[1] = 99
    with pytest.raises(UploadError, match="ETag") as info:
        uploader_client.asynch.upload(str(write(tmp_path, payload(2 * PART))))
    assert info.value.request_id == "req-1" and info.value.retryable
    assert len(store.stub.calls("PUT", r"/_parts/1")) == 3
    assert store.stub.calls("POST", r".*complete") == []


def test_opaque_etags_are_not_checked(
    stub: StubServer, uploader_client: ValenceClient, tmp_path: Path
) -> None:
    store = FakeStore(stub)
    stub._routes = [r for r in stub._routes if r[0] != "PUT"]
    stub.route("PUT", r"/_parts/\d+", Reply(headers={"ETag": '"opaque-etag-3"'}))
    uploader_client.asynch.upload(str(write(tmp_path, payload(2 * PART))))
    assert {p["ETag"] for p in store.completed()["parts"]} == {'"opaque-etag-3"'}


@pytest.mark.parametrize(
    ("url", "checked"),
    [
        ("https://bucket.s3.amazonaws.com/k?partNumber=1", False),  # TLS authenticates every byte
        ("HTTPS://store.example/k", False),
        ("http://127.0.0.1:8333/k", False),  # loopback: no wire
        ("http://127.8.9.10/k", False),
        ("http://localhost:9000/k", False),
        ("http://[::1]:9000/k", False),
        ("http://10.0.0.7:9000/k", True),  # plain HTTP across a network
        ("http://minio.lan:9000/k", True),
    ],
)
def test_etags_are_checked_only_over_plain_http_to_another_machine(url: str, checked: bool) -> None:
    from valence_client.upload import checks_etags

    assert checks_etags(url) is checked


@pytest.mark.parametrize("setting", [None, False])
def test_unchecked_etags_cost_no_hashing_and_no_second_put(
    stub: StubServer, sleeps: Sleeps, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: bool | None
) -> None:
    """Default over loopback (the stub), or turned off: a wrong ETag is taken as the store's
    word, and no byte is hashed for it (the check's whole cost)."""
    import valence_client.upload as upload

    def no_md5(*args: object, **kwargs: object) -> None:
        raise AssertionError("hashed a part whose ETag is not checked")

    monkeypatch.setattr(upload, "hashlib", SimpleNamespace(md5=no_md5))  # this module's only
    store = FakeStore(stub)
    store.bad_etags[1] = 1
    data = payload(3 * PART + 5)
    with make_valence(
        stub.base_url, sleeps, part_size=PART, part_size_adjuster=SMALL_PARTS, check_part_etags=setting
    ) as c:
        c.asynch.upload(write(tmp_path, data))  # ranged: streamed parts
        c.asynch.upload(io.BytesIO(data), size=len(data))  # one-way: whole parts
    assert len(store.stub.calls("PUT", r"/_parts/1")) == 2  # once per upload
    assert b"".join(store.received[n] for n in sorted(store.received)) == data


def test_a_failing_part_is_retried_by_the_transport(
    tmp_path: Path, store: FakeStore, uploader_client: ValenceClient
) -> None:
    store.fail_parts[3] = [Reply(503, body=b"<Error><Code>SlowDown</Code></Error>"), Reply(drop=True)]
    uploader_client.asynch.upload(str(write(tmp_path, payload(4 * PART))))
    assert len(store.stub.calls("PUT", r"/_parts/3")) == 3
    assert len(store.completed()["parts"]) == 4


def test_a_refused_part_stops_the_upload(
    tmp_path: Path, store: FakeStore, uploader_client: ValenceClient
) -> None:
    store.fail_parts[2] = [Reply(403, body=b"<Error><Code>AccessDenied</Code></Error>")] * 5
    with pytest.raises(UploadError) as info:
        uploader_client.asynch.upload(str(write(tmp_path, payload(3 * PART))))
    err = info.value
    assert (err.status, err.request_id, err.retryable) == (403, "req-1", False)
    assert SIGNATURE not in str(err) and SIGNATURE not in repr(err)
    assert store.stub.calls("POST", r".*complete") == []


def test_streams_with_known_size(store: FakeStore, uploader_client: ValenceClient) -> None:
    data = payload(3 * PART + 5)
    uploader_client.asynch.upload(io.BytesIO(data), file_name="from-memory.wav")
    assert b"".join(store.received[n] for n in sorted(store.received)) == data
    assert store.stub.calls("POST", r".*initiate")[0].query["file_name"] == "from-memory.wav"


def test_stream_shorter_than_declared_is_an_upload_error(
    store: FakeStore, uploader_client: ValenceClient
) -> None:
    class Pipe(io.RawIOBase):
        def __init__(self) -> None:
            self._left = 2 * PART

        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            n = min(size, self._left)
            self._left -= n
            return b"a" * n

    with pytest.raises(UploadError, match="ended early"):
        uploader_client.asynch.upload(Pipe(), size=3 * PART)
    assert store.stub.calls("POST", r".*complete") == []


def test_bad_sources_fail_before_any_call(
    tmp_path: Path, stub: StubServer, uploader_client: ValenceClient
) -> None:
    with pytest.raises(MissingFileError):
        uploader_client.asynch.upload(str(tmp_path / "nope.wav"))
    with pytest.raises(InvalidInputError, match="empty"):
        uploader_client.asynch.upload(str(write(tmp_path, b"")))
    with pytest.raises(InvalidInputError, match="size"):
        uploader_client.asynch.upload(_Unsized())
    with pytest.raises(InvalidInputError):
        uploader_client.asynch.upload(12345)
    assert stub.requests == []


class _Unsized:
    def read(self, size: int = -1) -> bytes:
        return b""


def test_file_over_the_limit_fails_before_any_call(tmp_path: Path, stub: StubServer, sleeps: Sleeps) -> None:
    path = tmp_path / "big.wav"
    with path.open("wb") as f:
        f.truncate(3 * MiB)  # sparse
    with (
        make_valence(stub.base_url, sleeps, max_upload_mb=2) as client,
        pytest.raises(FileSizeLimitExceededError) as info,
    ):
        client.asynch.upload(str(path))
    assert (info.value.max_size_mb, info.value.actual_size_mb) == (2.0, 3.0)
    assert stub.requests == []


# --------------------------------------------------------------------------- part sizes


def test_a_gigabyte_never_needs_more_than_10000_parts() -> None:
    adjuster = PartSizeAdjuster()
    size = adjuster.adjust(5 * MiB, GiB)
    assert size == 5 * MiB and adjuster.part_count(size, GiB) == 205
    tiny = PartSizeAdjuster(min_size=1)
    size = tiny.adjust(1, GiB)  # even if asked for 1-byte parts
    assert tiny.part_count(size, GiB) <= MAX_PARTS


@given(
    file_size=st.integers(1, 48 * 1024**4),
    part_size=st.integers(1, 6 * GiB),
)
def test_adjusted_part_size_respects_every_limit(file_size: int, part_size: int) -> None:
    adjuster = PartSizeAdjuster()
    size = adjuster.adjust(part_size, file_size)
    assert MIN_PART_SIZE <= size <= adjuster.max_size
    assert adjuster.part_count(size, file_size) <= MAX_PARTS


def test_too_big_for_any_part_size() -> None:
    with pytest.raises(InvalidInputError):
        PartSizeAdjuster().adjust(5 * MiB, 60 * 1024**4)


class RangedSource:
    """A source that offers `iter_range`: counts the parts being read at once."""

    def __init__(self, data: bytes, store: FakeStore, fail_at: int | None = None) -> None:
        self._data = data
        self._store = store
        self._fail_at = fail_at
        self.size = len(data)
        self.reads: list[int] = []
        self.open = 0
        self.max_open = 0
        self._lock = threading.Lock()

    def read(self, size: int = -1) -> bytes:
        raise AssertionError("a ranged source must be read by ranges")

    def iter_range(self, offset: int, length: int) -> Iterator[bytes]:
        if self._fail_at is not None and offset >= self._fail_at:
            raise LookupError("the source's own read error")
        with self._lock:
            self.reads.append(offset)
            self.open += 1
            self.max_open = max(self.max_open, self.open)
        try:
            for at in range(offset, offset + length, 1000):  # small chunks, as from a socket
                yield self._data[at : min(at + 1000, offset + length)]
        finally:
            with self._lock:
                self.open -= 1


def test_ranged_sources_are_read_part_by_part_in_parallel_within_the_bound(
    stub: StubServer, sleeps: Sleeps
) -> None:
    store = FakeStore(stub, put_delay_s=0.02)
    data = payload(30 * PART + 17)
    source = RangedSource(data, store)
    with make_valence(
        stub.base_url, sleeps, part_size=PART, part_size_adjuster=SMALL_PARTS, max_threads=3
    ) as c:
        c.asynch.upload(source, file_name="ranged.wav")
    assert b"".join(store.received[n] for n in sorted(store.received)) == data
    assert sorted(source.reads) == [n * PART for n in range(31)]
    assert source.max_open <= 3  # one range per part in flight, streamed into its PUT
    assert store.max_in_flight <= 3


def test_a_streamed_part_whose_put_fails_is_read_again(stub: StubServer, sleeps: Sleeps) -> None:
    store = FakeStore(stub)
    store.fail_parts[2] = [Reply(status=503), Reply(status=500)]
    data = payload(5 * PART)
    source = RangedSource(data, store)
    with make_valence(
        stub.base_url, sleeps, part_size=PART, part_size_adjuster=SMALL_PARTS, max_threads=2
    ) as c:
        c.asynch.upload(source, file_name="ranged.wav")
    assert b"".join(store.received[n] for n in sorted(store.received)) == data
    assert source.reads.count(PART) == 3  # part 2: once per attempt


def test_a_ranged_source_shorter_than_declared_is_an_upload_error(
    store: FakeStore, uploader_client: ValenceClient
) -> None:
    source = RangedSource(payload(3 * PART), store)
    source.size = 4 * PART
    with pytest.raises(UploadError, match="ended early"):
        uploader_client.asynch.upload(source, file_name="short.wav")
    assert store.stub.calls("POST", r".*complete") == []


def test_a_ranged_source_read_error_is_raised_as_itself_and_nothing_completes(
    store: FakeStore, uploader_client: ValenceClient
) -> None:
    source = RangedSource(payload(10 * PART), store, fail_at=4 * PART)
    with pytest.raises(LookupError, match="own read error"):
        uploader_client.asynch.upload(source, file_name="ranged.wav")
    assert store.stub.calls("POST", r".*complete") == []


def test_local_paths_are_read_by_ranges(
    tmp_path: Path, store: FakeStore, uploader_client: ValenceClient
) -> None:
    data = payload(12 * PART + 3)
    uploader_client.asynch.upload(write(tmp_path, data))
    assert b"".join(store.received[n] for n in sorted(store.received)) == data


def test_local_parts_reuse_one_read_buffer_and_every_byte_and_etag_is_right(
    tmp_path: Path, store: FakeStore, uploader_client: ValenceClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import valence_client.upload as upload

    monkeypatch.setattr(upload, "LOCAL_CHUNK", 1000)  # parts of 4096: chunks end mid-part, short last ones
    data = payload(9 * PART + 77)
    path = write(tmp_path, data)
    with path.open("rb") as f:
        chunks = upload._LocalRanges(f.fileno()).iter_range(PART + 5, 2 * PART)
        seen = [(bytes(chunk), chunk.obj) for chunk in chunks]  # copied before the next read
    assert b"".join(c for c, _ in seen) == data[PART + 5 : 3 * PART + 5]
    assert len(seen) == 9 and len({id(buffer) for _, buffer in seen}) == 1  # one buffer, refilled

    uploader_client.asynch.upload(path)

    assert b"".join(store.received[n] for n in sorted(store.received)) == data
    parts = store.completed()["parts"]
    assert [p["ETag"] for p in parts] == [
        f'"{etag_of(data[i : i + PART])}"' for i in range(0, len(data), PART)
    ]


@given(
    file_size=st.integers(min_value=1, max_value=2 * GiB),
    budget_mib=st.integers(min_value=10, max_value=1024),
)
def test_a_memory_budget_plans_parts_within_it(file_size: int, budget_mib: int) -> None:
    from valence_client.upload import plan_upload

    adjuster = PartSizeAdjuster()
    budget = budget_mib * MiB
    part_size, threads = plan_upload(
        file_size, memory_budget=budget, part_size=MIN_PART_SIZE, max_threads=3, adjuster=adjuster
    )
    assert threads >= 1 and part_size >= MIN_PART_SIZE
    assert adjuster.part_count(part_size, file_size) <= MAX_PARTS
    assert threads <= adjuster.part_count(part_size, file_size)
    if adjuster.part_count(MIN_PART_SIZE * 2, file_size) < MAX_PARTS // 2:  # not forced up by the part limit
        assert (threads + 1) * part_size <= budget
    # A ranged source streams its parts: threads, not part size, are what the budget pays for.
    part_size, threads = plan_upload(
        file_size,
        memory_budget=budget,
        part_size=MIN_PART_SIZE,
        max_threads=3,
        adjuster=adjuster,
        ranged=True,
    )
    assert 1 <= threads <= min(4, budget // (2 * MiB))
    assert threads <= adjuster.part_count(part_size, file_size) <= MAX_PARTS


def test_complete_waits_longer_for_a_bigger_object(
    tmp_path: Path, store: FakeStore, uploader_client: ValenceClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import valence_client.upload as upload

    # The server reads the whole object back before it answers `complete`: at the assumed
    # 1,000 B/s, 10 parts of 4096 bytes need 41 s, more than the client's 5 s read timeout.
    monkeypatch.setattr(upload, "COMPLETE_READ_RATE", 1000)
    session = uploader_client.transport.session
    timeouts: dict[str, Any] = {}
    real_request = session.request

    def request(method: str, url: str, **kwargs: Any) -> Any:
        timeouts[url.split("?")[0].rsplit("/", 1)[-1]] = kwargs.get("timeout")
        return real_request(method, url, **kwargs)

    monkeypatch.setattr(session, "request", request)
    uploader_client.asynch.upload(write(tmp_path, payload(10 * PART)))

    assert timeouts["complete"] == (5.0, 10 * PART / 1000)
    assert timeouts["initiate"] == 5.0 and timeouts["1"] == 5.0  # every other call keeps its own
    assert upload.complete_timeout((2.0, 60.0), 1000) == (2.0, 60.0)  # never shorter than configured


def test_one_part_at_a_time_is_sent_from_the_calling_thread(
    tmp_path: Path, store: FakeStore, stub: StubServer, sleeps: Sleeps, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No thread is started per upload when it sends one part at a time (a short recording)."""

    def no_pool(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a thread pool for one part at a time")

    monkeypatch.setattr(upload_module, "ThreadPoolExecutor", no_pool)
    client = make_valence(
        stub.base_url, sleeps, part_size=PART, part_size_adjuster=SMALL_PARTS, max_threads=1
    )
    data = payload(2 * PART + 7)
    client.asynch.upload(str(write(tmp_path, data)))
    assert b"".join(store.received[n] for n in sorted(store.received)) == data
    assert [p["PartNumber"] for p in store.completed()["parts"]] == [1, 2, 3]

    store.fail_parts[1] = [Reply(403, body=b"<Error><Code>AccessDenied</Code></Error>")] * 5
    with pytest.raises(UploadError) as info:  # a part's failure is the upload's, as from a pool
        client.asynch.upload(io.BytesIO(data[:PART]), file_name="one-part.wav")
    assert info.value.status == 403
