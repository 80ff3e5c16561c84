"""The pieces of the streaming client that need no server: send queue, backoff, PCM sources."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from valence_client import APIConnectionError, ReconnectPolicy, SendQueueFullError
from valence_client.stream_protocol import AudioMessage, PredictionEvent
from valence_client.streaming import MAX_CHUNK_BYTES, SendQueue, _Chunk, pcm_chunks


def chunk(n: int, fill: int = 0) -> _Chunk:
    return _Chunk(bytes([fill]) * n, None)


def test_full_queue_drops_the_oldest_and_never_exceeds_its_bound() -> None:
    q = SendQueue(MAX_CHUNK_BYTES)
    sizes = random.Random(1).choices(range(2, 20_000, 2), k=500)
    for i, size in enumerate(sizes):
        q.put(chunk(size, i % 256))
        assert q.queued_bytes <= q.max_bytes
    assert q.high_water <= q.max_bytes
    assert q.dropped_bytes + q.queued_bytes == sum(sizes)
    kept = []
    while (c := q.get(timeout=0)) is not None:
        kept.append(c.pcm[0])
        q.done()
    assert kept == [i % 256 for i in range(len(sizes) - len(kept), len(sizes))]  # the newest survive


def test_blocking_put_waits_for_room_or_gives_up() -> None:
    q = SendQueue(MAX_CHUNK_BYTES)
    q.put(chunk(MAX_CHUNK_BYTES))
    with pytest.raises(SendQueueFullError):
        q.put(chunk(2), block=True, timeout=0.01)
    assert q.dropped_chunks == 0  # waiting never drops

    def consume() -> None:
        assert q.get(timeout=30) is not None
        q.done()

    consumer = threading.Thread(target=consume)
    consumer.start()
    q.put(chunk(2), block=True, timeout=30)  # room appears once the consumer takes a chunk
    consumer.join()
    assert (q.queued_bytes, q.dropped_chunks) == (2, 0)


def test_requeue_puts_an_unsent_chunk_back_in_front_and_close_wakes_waiters() -> None:
    q = SendQueue(MAX_CHUNK_BYTES)
    q.put(chunk(4, 1))
    q.put(chunk(4, 2))
    first = q.get(timeout=0)
    assert first is not None
    q.requeue(first)
    assert [q.get(timeout=0).pcm[0] for _ in range(2)] == [1, 2]  # type: ignore[union-attr]

    q.put(chunk(MAX_CHUNK_BYTES))
    errors: list[Exception] = []

    def blocked_put() -> None:
        try:
            q.put(chunk(2), block=True)
        except APIConnectionError as exc:
            errors.append(exc)

    waiter = threading.Thread(target=blocked_put)
    waiter.start()
    q.close()
    waiter.join()
    assert len(errors) == 1 and q.wait_empty(timeout=0)


def test_reconnect_backoff_is_exponential_capped_and_jittered_into_the_upper_half() -> None:
    policy = ReconnectPolicy(initial_s=0.5, max_s=8.0)

    class Top(random.Random):
        def random(self) -> float:
            return 1.0

    assert [policy.delay(n, Top()) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    rng = random.Random(3)
    for n in range(1, 30):
        ceiling = min(8.0, 0.5 * 2 ** (n - 1))
        assert max(0.5, ceiling / 2) <= policy.delay(n, rng) <= ceiling


def test_pcm_chunks_downmixes_a_stereo_file_and_keeps_its_rate(tmp_path: Path) -> None:
    frames = np.array([[1000, 3000], [-2000, 0], [7, 8]] * 1000, dtype=np.int16)
    path = tmp_path / "call.wav"
    sf.write(path, frames, 22050, subtype="PCM_16")
    rate, chunks = pcm_chunks(path, chunk_s=0.05)
    pcm = b"".join(chunks)
    assert rate == 22050
    mono = np.round(frames.mean(axis=1)).astype("<i2")
    assert pcm == mono.tobytes()


def test_pcm_chunks_takes_bytes_or_int16_arrays_and_nothing_else(tmp_path: Path) -> None:
    rate, chunks = pcm_chunks([b"\x01\x00", np.array([2, 3], dtype=np.int16)], sample_rate=8000)
    assert (rate, list(chunks)) == (8000, [b"\x01\x00", b"\x02\x00\x03\x00"])
    with pytest.raises(ValueError, match="int16"):
        list(pcm_chunks([np.zeros(4, dtype=np.float32)])[1])
    with pytest.raises(ValueError, match="no such audio file"):
        pcm_chunks(tmp_path / "missing.wav")
    (tmp_path / "noise.wav").write_bytes(b"not audio at all")
    with pytest.raises(ValueError, match="not readable audio"):
        pcm_chunks(tmp_path / "noise.wav")


def test_wire_models_round_trip_and_allow_sdk_style_access() -> None:
    message = AudioMessage.from_pcm(b"\x01\x00\x02\x00", "4emotions")
    assert message.to_wire() == {
        "service": "emotion",
        "action": "prediction",
        "model": "4emotions",
        "payload": "AQACAA==",
    }  # no sample_rate unless known, like the SDK
    assert AudioMessage.model_validate(message.to_wire()).pcm() == b"\x01\x00\x02\x00"
    event = PredictionEvent.model_validate(
        {"main_emotion": "sad", "confidence": 0.6, "all_predictions": {"sad": 0.6}, "timestamp": 1, "x": 2}
    )
    assert (event["main_emotion"], event["x"], event.get("missing", "-")) == ("sad", 2, "-")
    assert event.timestamp == 1 and isinstance(event.timestamp, int)
    with pytest.raises(KeyError):
        event["missing"]
