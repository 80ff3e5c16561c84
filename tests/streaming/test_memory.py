"""A server that stops reading mid-stream must not make our client hold the audio: 64 MiB are
sent through a proxy that stops reading after 1 MiB, in a child process whose peak RSS and
queue fill level are measured (no timing is asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from emulator.process import EmulatorProcess
from tests.streaming.helpers import StallingProxy

REPO = Path(__file__).resolve().parents[2]
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
    # ru_maxrss survives exec: a child exec'd straight from pytest would report pytest's peak.
    # A shell that forks the child gives it its own accounting.
    args = [proxy.url, str(QUEUE_BYTES), str(AUDIO_MIB)]
    child = subprocess.run(
        ["/bin/sh", "-c", '"$0" "$@"; exit $?', sys.executable, "-m", "tests.streaming.memory_child", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    report = json.loads(child.stdout.strip().splitlines()[-1])
    print(f"\nslow-server stream: {report}")

    assert proxy.stalled.is_set()  # the server really stopped reading
    assert report["produced_bytes"] >= AUDIO_MIB * MiB
    assert report["sent_bytes"] < report["produced_bytes"] // 4  # most never left
    assert report["dropped_bytes"] > report["produced_bytes"] // 2  # dropped, oldest first
    assert report["fullest_seen_bytes"] <= QUEUE_BYTES
    assert report["max_queued_bytes"] <= report["max_queue_bytes"] == QUEUE_BYTES
    assert report["producer_blocked"]  # block=True gave up instead of growing
    assert report["peak_mib"] - report["baseline_mib"] < GROWTH_LIMIT_MIB, report
