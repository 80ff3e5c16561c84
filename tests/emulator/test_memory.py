"""A big async upload never sits in the emulator's memory: parts are streamed to disk, the
object is assembled on disk and decoded in blocks. Measured as the emulator process's peak
resident memory (VmHWM) before and after a ~1 GB upload."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from emulator.process import EmulatorProcess
from localstack.sample_data import write_large_wav
from tests.emulator.helpers import MIB, sha256, status, upload, wav

SIZE = 1000 * MIB
"""Just under the async API's 1 GiB limit."""
ALLOWED_GROWTH = 100 * MIB


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


@pytest.mark.slow
def test_gigabyte_upload_keeps_memory_flat(
    make_emulator: Callable[..., EmulatorProcess], tmp_path: Path
) -> None:
    emu = make_emulator(time_scale=3600)
    assert emu.pid is not None
    upload(emu, wav(tmp_path / "warm-up.wav", 30))  # load every code path once
    before = _peak_rss(emu.pid)

    big = tmp_path / "big.wav"
    write_large_wav(big, SIZE)
    started = time.monotonic()
    request_id = upload(emu, big)
    elapsed = time.monotonic() - started
    after = _peak_rss(emu.pid)

    emu.advance_clock(3600)  # 9 h of audio take ~14 emulated minutes to process
    body = status(emu, request_id).json()
    assert body["status"] == "completed"
    duration = (SIZE - 44) // 2 / 16000  # 16 kHz mono PCM_16 after a 44-byte header
    assert len(body["emotions"]) == math.ceil(duration / 5)  # one per 5 s (the tail is ~4 s)
    assert emu.ledger()["entries"][-1]["sha256"] == sha256(big)
    growth = after - before
    print(
        f"1000 MiB upload+analysis in {elapsed:.1f} s; emulator peak RSS {before / MIB:.0f} -> {after / MIB:.0f} MiB"
    )
    assert growth < ALLOWED_GROWTH, (
        f"peak RSS grew by {growth / MIB:.0f} MiB for a {SIZE / MIB:.0f} MiB upload"
    )
