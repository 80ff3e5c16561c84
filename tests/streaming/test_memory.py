"""A server that stops reading mid-stream must not make our client hold the audio: 64 MiB are
sent through a proxy that stops reading after 1 MiB, in a child process whose peak RSS and
queue fill level are measured (no timing is asserted)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from emulator.process import EmulatorProcess
from tests.fixtures.children import run_measured_child
from tests.streaming.helpers import StallingProxy

MiB = 1024 * 1024
AUDIO_MIB = 64
QUEUE_BYTES = 1 * MiB
GROWTH_LIMIT_MIB = 8
"""Queue bound plus one message plus allocator slack (measured: well under 1 MiB). Without the
wait on the Socket.IO client's own unbounded queue the same run grew by about 20 MiB."""


@pytest.fixture
def proxy(emu: EmulatorProcess) -> Iterator[StallingProxy]:
    target = urlsplit(emu.base_url)
    assert target.hostname and target.port
    stalling = StallingProxy((target.hostname, target.port), stall_after=1 * MiB)
    yield stalling
    stalling.close()


def test_memory_stays_bounded_when_the_server_stops_reading(
    emu: EmulatorProcess, proxy: StallingProxy
) -> None:
    env = {**os.environ, "VALENCE_API_KEY": emu.valence_key}
    args = [proxy.url, str(QUEUE_BYTES), str(AUDIO_MIB)]
    report = run_measured_child("tests.streaming.memory_child", *args, env=env)
    print(f"\nslow-server stream: {report}")

    assert proxy.stalled.is_set()  # the server really stopped reading
    assert report["produced_bytes"] >= AUDIO_MIB * MiB
    assert report["sent_bytes"] < report["produced_bytes"] // 4  # most never left
    assert report["dropped_bytes"] > report["produced_bytes"] // 2  # dropped, oldest first
    assert report["fullest_seen_bytes"] <= QUEUE_BYTES
    assert report["max_queued_bytes"] <= report["max_queue_bytes"] == QUEUE_BYTES
    assert report["producer_blocked"]  # block=True gave up instead of growing
    assert report["peak_mib"] - report["baseline_mib"] < GROWTH_LIMIT_MIB, report
