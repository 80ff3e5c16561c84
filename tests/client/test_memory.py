"""A 300 MB recording goes up (Valence multipart, from a path and from a one-way stream, and
Valsea's streamed multipart) in a child process whose peak RSS stays far below the file size."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from emulator.process import EmulatorProcess
from localstack.sample_data import write_large_wav
from tests.fixtures.children import run_measured_child

SIZE = 300 * 1024 * 1024
PEAK_LIMIT_MIB = 150


@pytest.mark.slow
def test_large_upload_memory_stays_bounded(emu: EmulatorProcess, tmp_path: Path) -> None:
    big = tmp_path / "big.wav"
    write_large_wav(big, SIZE)  # written block by block; never in our memory either
    env = {**os.environ, "VALENCE_API_KEY": emu.valence_key, "VALSEA_API_KEY": emu.valsea_key or ""}
    report = run_measured_child("tests.client.memory_child", emu.base_url, str(big), env=env)
    print(f"\nbounded-memory upload: {report}")
    assert report["size_mib"] == 300
    assert report["peak_mib"] < PEAK_LIMIT_MIB, report
    emu_status = emu.ledger()["by_sha256"]
    billed = next(iter(emu_status.values()))
    assert (billed["valence_async"], billed["valsea_job"]) == (2, 1)  # both uploads and the submit landed
