"""`valence-pipeline stream FILE` against the emulator, as a user would run it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from emulator.process import EmulatorProcess
from localstack.sample_data import write_audio
from tests.streaming.helpers import ws_url
from valence_client.models import VALENCE_MODELS

REPO = Path(__file__).resolve().parents[2]
LINE = re.compile(r"^(\d\d:\d\d)-(\d\d:\d\d)  (\w+) +(0\.\d\d|1\.00)  \[(.*)\]")


def run_stream(emu: EmulatorProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "VALENCE_API_KEY": emu.valence_key,
        "VALENCE_API_BASE_URL": emu.base_url,
        "VALENCE_WEBSOCKET_URL": ws_url(emu),
    }
    return subprocess.run(
        [sys.executable, "-m", "commands.main", "stream", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_stream_command_prints_each_prediction(emu: EmulatorProcess, tmp_path: Path) -> None:
    path = tmp_path / "call.wav"
    write_audio(path, 11.0, samplerate=16000, seed=12)
    done = run_stream(emu, str(path), "--pace", "0", "--model", "7emotions")
    assert done.returncode == 0, done.stderr
    lines = [LINE.match(line) for line in done.stdout.splitlines()]
    assert all(lines) and len(lines) == 2, done.stdout
    assert [(m[1], m[2]) for m in lines if m] == [("00:00", "00:05"), ("00:05", "00:10")]
    for m in lines:
        assert m is not None
        assert {part.split()[0] for part in m[5].split("  ")} == set(VALENCE_MODELS["7emotions"])
    assert "connected: session" in done.stderr
    assert "2 of 2 predictions for 11.0 s of audio" in done.stderr
    assert emu.valence_key not in done.stdout + done.stderr


def test_stream_command_reports_a_missing_file(emu: EmulatorProcess, tmp_path: Path) -> None:
    done = run_stream(emu, str(tmp_path / "nope.wav"))
    assert done.returncode == 2
    assert "no such audio file" in done.stderr and done.stdout == ""
